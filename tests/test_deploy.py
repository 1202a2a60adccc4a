"""Deployment files: the hybrid NGINX front routes as documented; manifests are valid Kubernetes."""
from __future__ import annotations

import json
import os
import re
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
    assert Path(nginx).exists(), "nginx is installed by `make system-deps` (Debian package)"
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
    assert all("kronos_queued_series" in t["metadata"]["query"] for t, _, _ in triggers["prometheus"])


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
# -- safe defaults ---------------------------------------------------------------------------------
CONFIG_DEFAULTS = yaml.safe_load((ROOT / "configuration" / "kronos.yaml").read_text())
COMPOSE_FILES = sorted(DEPLOY.glob("compose.*.yaml"))


def k8s_containers() -> list[tuple[dict, dict, dict]]:
    """(deployment, container, effective KRONOS_* env: ConfigMap overlaid by the container's env)."""
    documents = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in load_documents(path)]
    config_maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    found = []
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env: dict = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            env.update({e["name"]: e["value"] for e in container.get("env", [])})
            found.append((deployment, container, env))
    return found


def compose_services() -> list[tuple[str, dict, dict]]:
    """(file name, service, environment) of every Kronos service in the compose files."""
    return [(path.name, service, service.get("environment") or {})
            for path in COMPOSE_FILES
            for service in yaml.safe_load(path.read_text())["services"].values()
            if "kronos" in service["image"]]


def setting(env: dict, name: str) -> float:
    return float(env.get(f"KRONOS_{name.upper()}", CONFIG_DEFAULTS[name]))


def seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([smh])", text))


def test_deploy_files_never_blank_the_model_nor_allow_random_weights():
    envs = [env for *_, env in k8s_containers()] + [env for *_, env in compose_services()]
    assert len(envs) == 9  # 2 Kubernetes Deployments; compose: cpu, gpu, hybrid (2), postgres (2), rabbitmq
    for env in envs:
        for name in ("KRONOS_MODEL", "KRONOS_VARIANTS", "KRONOS_TOKENIZER"):
            assert env.get(name, "unset") != "", f"{name} blanked: the Bento's packed model is lost"
        assert str(env.get("KRONOS_DEV_FALLBACK")).lower() == "false"
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert {"name": "KRONOS_DEV_FALLBACK", "value": "false"} in bentofile["envs"]


def test_stop_grace_periods_cover_the_request_timeout_and_the_drain():
    for deployment, _, env in k8s_containers():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= setting(env, "timeout_s") + setting(env, "drain_delay_s") + 5, \
            deployment["metadata"]["name"]
    for name, service, env in compose_services():
        grace = seconds(service.get("stop_grace_period", "10s"))
        assert grace >= setting(env, "timeout_s") + setting(env, "drain_delay_s") + 5, name


def test_gpu_pods_set_their_own_worker_count_one_per_gpu():
    for deployment, container, env in k8s_containers():
        own = {e["name"] for e in container.get("env", [])}
        assert "KRONOS_WORKERS" in own, "workers are per device, not from the shared ConfigMap"
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        if gpus:
            assert env["KRONOS_DEVICE"].startswith("cuda") and int(env["KRONOS_WORKERS"]) == gpus
        else:
            cores = float(container["resources"]["requests"]["cpu"])
            assert int(env["KRONOS_WORKERS"]) * int(env["KRONOS_THREADS"]) <= cores
    for name, service, env in compose_services():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        gpus = sum(len(d.get("device_ids", [])) for d in devices)
        if gpus:
            assert int(env["KRONOS_WORKERS"]) == gpus, name


def test_compose_files_run_the_tags_the_build_script_makes():
    done = subprocess.run(["bash", "scripts/build_image.sh", "--bento", "kronos:v123", "--backend",
                           "podman"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BENTOML": "echo"})  # prints the containerize command
    assert done.returncode == 0, done.stderr
    made = set(re.findall(r"--image-tag (\S+)", done.stdout))
    assert made == {"kronos-cpu:v123", "kronos-cpu:latest"}
    gpu = subprocess.run(["bash", "scripts/build_image.sh", "--bento", "kronos:v123", "--gpu",
                          "--backend", "podman"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "BENTOML": "echo"})
    made |= set(re.findall(r"--image-tag (\S+)", gpu.stdout))
    for name, service, _ in compose_services():
        default = re.fullmatch(r"\$\{KRONOS_IMAGE_(?:CPU|GPU):-(\S+)\}", service["image"]).group(1)
        assert default in made, (name, default)


def test_build_script_refuses_a_docker_cli_without_a_daemon(tmp_path):
    fake = tmp_path / "docker"  # a docker CLI whose daemon is unreachable
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", "scripts/build_image.sh", "--bento", "kronos:v1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "BENTOML": "echo"})
    assert "docker is installed but does not answer" in done.stderr
    assert "--backend docker" not in done.stdout
