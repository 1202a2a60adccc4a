"""The observability stack: alert rules pass promtool; the compose stack's files fit together; a
real Prometheus (Debian's) scraping a real server answers every Grafana panel's query."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time

import httpx
import pytest
import yaml

from conftest import score_one_outcome
from local_server import ROOT, free_port, import_dev_model, running_server

STACK = ROOT / "deploy" / "observability"
DASHBOARD = ROOT / "configuration" / "grafana-dashboard.json"


def binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert shutil.which(path), f"{name}: Debian's prometheus package (make system-deps)"
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run([binary("promtool"), "check", "rules", "alerts.yml"], cwd=STACK,
                           capture_output=True, text=True)
    assert check.returncode == 0 and "5 rules found" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run([binary("promtool"), "test", "rules", "alerts.test.yml"], cwd=STACK,
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = yaml.safe_load((STACK / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"KronosHighErrorRate", "KronosHighLatencyP95",
                                           "KronosQueueFull", "KronosNotReady", "KronosModelLoadFailed"}


def test_compose_stack_mounts_existing_files_and_wires_its_services():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.observability.yaml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana", "otel-collector", "jaeger"} <= set(services)
    mounts = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert (ROOT / "deploy" / source).resolve().exists(), source
            mounts[target] = (ROOT / "deploy" / source).resolve()
    prometheus = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert all(rule in mounts for rule in prometheus["rule_files"])
    provider = yaml.safe_load((STACK / "grafana/provisioning/dashboards/kronos.yaml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"] + "/kronos.json"] == DASHBOARD
    sources = yaml.safe_load((STACK / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    urls = {s["type"]: s["url"] for s in sources["datasources"]}
    assert urls["prometheus"] == "http://prometheus:9090" and urls["jaeger"].startswith("http://jaeger:")
    collector = yaml.safe_load(mounts["/etc/otelcol/config.yaml"].read_text())
    exporter = collector["exporters"][collector["service"]["pipelines"]["traces"]["exporters"][0]]
    assert exporter["endpoint"].split(":")[0] == "jaeger"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$model_version", ".*"))
            for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A Kronos server and a real Prometheus scraping it every second with the alert rules."""
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("prometheus")
    tag = import_dev_model(home, "kronos-prom")
    with running_server(home, {"KRONOS_MODEL": tag}, work / "server.log") as server:
        target = server.url.removeprefix("http://")
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(STACK / "alerts.yml")],
            "scrape_configs": [{"job_name": "kronos", "metrics_path": "/metrics",
                                "static_configs": [{"targets": [target]}]}]}))
        port = free_port()
        process = subprocess.Popen([binary("prometheus"), f"--config.file={work / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={work / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=(work / "prom.log").open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: query(url, 'up{job="kronos"} == 1'), 60, "Prometheus scraping the server")
            time.sleep(2)  # two scrapes before the traffic: rates over it are not empty
            yield server, url
        finally:
            process.terminate()
            process.wait(timeout=30)


def query(url: str, expr: str) -> list:
    try:
        answer = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=5).json()
    except (httpx.HTTPError, ValueError):  # not up yet: no answer, or not JSON yet
        return []
    assert answer["status"] == "success", (expr, answer)
    return [r for r in answer["data"]["result"] if math.isfinite(float(r["value"][1]))]


def wait_for(probe, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if result := probe():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_dashboard_panel_query_returns_data_after_traffic(prometheus):
    server, url = prometheus
    body = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]],
            "pred_len": 2, "top_k": 1}
    sampled = {**body, "top_k": None, "pred_len": 3}  # not cacheable: runs the model every time

    def forecast(payload, status=200):
        assert httpx.post(server.url + "/v1/predict/single", json=payload, timeout=60).status_code == status

    forecast(body)  # the first request creates the series; scrapes see them before the rest
    forecast({"data": [[1.0] * 4]}, 400)
    time.sleep(2.5)
    for payload in (body, body, sampled, sampled):  # cache hits, then model runs
        forecast(payload)
    forecast({"data": [[1.0] * 4]}, 400)
    score_one_outcome(server, "first")  # the live-accuracy series appear ...
    time.sleep(2.5)
    score_one_outcome(server, "second")  # ... and grow: their rates have data
    queries = panel_queries()
    assert len(queries) >= 15
    for title, expr in queries:
        wait_for(lambda: query(url, expr), 30, f"panel {title!r}: {expr}")
    rules = httpx.get(url + "/api/v1/rules").json()["data"]["groups"][0]["rules"]
    assert len(rules) == 5 and all(rule["health"] == "ok" for rule in rules), rules
    firing = {a["labels"]["alertname"] for a in httpx.get(url + "/api/v1/alerts").json()["data"]["alerts"]}
    assert not firing & {"KronosModelLoadFailed", "KronosQueueFull", "KronosHighErrorRate"}, firing
