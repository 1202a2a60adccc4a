"""Deployment files: the hybrid NGINX front routes as documented; manifests are valid Kubernetes."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from local_server import ROOT, free_port

DEPLOY = ROOT / "deploy"


def backend(name: str) -> ThreadingHTTPServer:
    """A stand-in service that answers with its name and the headers it received."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"backend": name, "path": self.path,
                               "request_id": self.headers.get("X-Request-ID")}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is installed by `make install` (Debian package)"
    cpu, gpu = backend("cpu"), backend("gpu")
    work = tmp_path_factory.mktemp("nginx")
    port = free_port()
    (work / "upstreams.conf").write_text(
        f"upstream kronos_cpu {{ server 127.0.0.1:{cpu.server_port}; }}\n"
        f"upstream kronos_gpu {{ server 127.0.0.1:{gpu.server_port}; }}\n")
    site = (DEPLOY / "nginx" / "kronos.conf").read_text().replace("listen 8080;", f"listen 127.0.0.1:{port};")
    (work / "kronos.conf").write_text(site)
    (work / "nginx.conf").write_text(f"""
pid {work}/nginx.pid;
error_log {work}/error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    include {work}/upstreams.conf;
    include {work}/kronos.conf;
}}
""")
    check = subprocess.run([nginx, "-t", "-c", str(work / "nginx.conf")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    for _ in range(50):
        try:
            httpx.get(url + "/v1/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
    cpu.shutdown()
    gpu.shutdown()


@pytest.mark.parametrize("path,header,expected", [
    ("/v1/predict/single", None, "cpu"),
    ("/v1/predict/batch", None, "gpu"),
    ("/v1/predict/single", "gpu", "gpu"),
    ("/v1/predict/batch", "cpu", "cpu"),
    ("/v1/predict/batch", "GPU", "gpu"),
    ("/v1/readyz", None, "cpu"),
])
def test_hybrid_gateway_routes_by_path_and_header(gateway, path, header, expected):
    headers = {"X-Request-ID": "gw-1"}
    if header:
        headers["X-Kronos-Device"] = header
    response = httpx.post(gateway + path, json={}, headers=headers)
    assert response.status_code == 200
    assert response.json()["backend"] == expected and response.json()["path"] == path
    assert response.headers["x-backend-used"] == expected
    assert response.json()["request_id"] == "gw-1"


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_validate_against_the_schemas():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    documents = [(path, doc) for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 for doc in load_documents(path)]
    kinds = {doc["kind"] for _, doc in documents}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "ServiceMonitor"} <= kinds
    for path, doc in documents:
        if doc["kind"] == "ServiceMonitor":  # a CRD: checked against its own schema below
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    deployments = [doc for _, doc in documents if doc["kind"] == "Deployment"]
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v1/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v1/healthz"
        assert container["resources"]["requests"]["cpu"]
    assert any("nvidia.com/gpu" in d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
               for d in deployments)
    hpas = [doc for _, doc in documents if doc["kind"] == "HorizontalPodAutoscaler"]
    metric_types = {m["type"] for h in hpas for m in h["spec"]["metrics"]}
    assert {"Resource", "Pods"} <= metric_types


def test_service_monitor_matches_its_crd_schema():
    import jsonschema

    schema = yaml.safe_load((DEPLOY / "k8s" / "schemas" / "servicemonitor.schema.yaml").read_text())
    monitors = [doc for path in (DEPLOY / "k8s").glob("*.yaml") for doc in load_documents(path)
                if doc["kind"] == "ServiceMonitor"]
    assert monitors
    for monitor in monitors:
        jsonschema.validate(monitor, schema)
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


# Trigger metadata KEDA's scalers read (pkg/scalers/rabbitmq_scaler.go, prometheus_scaler.go,
# cpu_memory_scaler.go); "<name>FromEnv" reads <name> from the target container's environment.
KEDA_TRIGGER_KEYS = {
    "rabbitmq": {"queueName", "mode", "queueLength", "value", "activationValue", "host", "protocol",
                 "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation",
                 "timeout", "unsafeSsl"},
    "prometheus": {"serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
                   "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout"},
    "cpu": {"type", "value", "containerName"},
}


def strict(schema: dict) -> dict:
    """The CRD schema with unknown fields rejected (the API server would prune them silently)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


def test_keda_manifests_validate_against_the_keda_crd_and_kubernetes():
    import jsonschema
    import kubernetes_validate

    documents = [doc for path in sorted((DEPLOY / "k8s" / "keda").glob("*.yaml"))
                 for doc in load_documents(path)]
    schema = strict(yaml.safe_load(
        (DEPLOY / "k8s" / "schemas" / "keda-scaledobject.schema.yaml").read_text()))
    manifests = [*(DEPLOY / "k8s").glob("*.yaml"), *(DEPLOY / "k8s" / "keda").glob("*.yaml")]
    deployments = {doc["metadata"]["name"]: doc for path in manifests
                   for doc in load_documents(path) if doc["kind"] == "Deployment"}
    scaled = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    assert {doc["kind"] for doc in documents} == {"Deployment", "Secret", "ScaledObject"}
    version = kubernetes_validate.latest_version()
    for doc in documents:
        if doc["kind"] != "ScaledObject":
            kubernetes_validate.validate(doc, version, strict=True)
    triggers = {}
    for so in scaled:
        assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"]
        jsonschema.validate(so, schema)
        assert so["spec"]["minReplicaCount"] == 1  # at least one instance per model
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        container = target["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        for trigger in so["spec"]["triggers"]:
            keys = {k[:-len("FromEnv")] if k.endswith("FromEnv") else k for k in trigger["metadata"]}
            assert keys <= KEDA_TRIGGER_KEYS[trigger["type"]], (so["metadata"]["name"], keys)
            for key, value in trigger["metadata"].items():
                if key.endswith("FromEnv"):
                    assert value in env, f"{value} is not in {target['metadata']['name']}'s env"
            triggers.setdefault(trigger["type"], []).append((trigger, target, env))
    (queue_trigger, queue_target, queue_env), = triggers["rabbitmq"]
    assert queue_trigger["metadata"]["mode"] == "QueueLength"
    assert queue_trigger["metadata"]["queueName"] == queue_env["KRONOS_AMQP_QUEUE"]["value"]
    assert queue_env["KRONOS_AMQP_URL"]["valueFrom"]["secretKeyRef"]["name"] == "kronos-amqp"
    pod = queue_target["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"]  # on GPU nodes
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v1/readyz"
    http_targets = {target["metadata"]["name"] for _, target, _ in triggers["prometheus"]}
    assert http_targets == {"kronos-cpu", "kronos-gpu"}
    assert all("kronos_in_flight_requests" in t["metadata"]["query"] for t, _, _ in triggers["prometheus"])


def test_queue_worker_deployments_use_known_settings():
    from dataclasses import fields

    from kronos_serving.settings import Settings

    known = {f"KRONOS_{f.name.upper()}" for f in fields(Settings)}
    compose = yaml.safe_load((DEPLOY / "compose.rabbitmq.yaml").read_text())["services"]
    assert "management" in compose["rabbitmq"]["image"]  # the management plugin is on
    worker = compose["kronos-worker"]["environment"]
    assert worker["KRONOS_AMQP_URL"].startswith("amqp://") and "rabbitmq" in worker["KRONOS_AMQP_URL"]
    queue = load_documents(DEPLOY / "k8s" / "keda" / "deployment-queue.yaml")[0]
    names = set(worker) | {e["name"] for e in queue["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {name for name in names if name.startswith("KRONOS_")} <= known
