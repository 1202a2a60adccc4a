"""JSON logs, Prometheus metrics and OpenTelemetry traces, against a real server."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import score_one_outcome
from local_server import import_dev_model, running_server
from local_server import metric_total as scrape

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
SENTINELS = ("12345.678", "23456.789", "34567.891", "45678.912")  # values that must never be logged


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1."""

    def __init__(self) -> None:
        self.spans: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans_of(self, trace_id: str) -> list:
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def receiver():
    otlp = OtlpReceiver()
    yield otlp
    otlp.server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver):
    home = tmp_path_factory.mktemp("home")
    tag = import_dev_model(home, "kronos-obs")
    env = {"KRONOS_MODEL": tag, "KRONOS_OTLP_ENDPOINT": receiver.url, "KRONOS_LOG_LEVEL": "INFO",
           "KRONOS_WORKERS": "2"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def body_with_sentinels(pred_len=3):
    rows = [[float(SENTINELS[1]), float(SENTINELS[3]), float(SENTINELS[0]), float(SENTINELS[2])]]
    rows += [[100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i] for i in range(20)]
    stamps = [f"2024-05-01T10:{i:02d}:00" for i in range(21)]
    return {"data": rows, "timestamps": stamps, "pred_len": pred_len}


def test_ready_means_every_worker_loaded(server):
    """The fixture waits for the first 200 from /v1/readyz: by then both workers have loaded their
    model, so no request can reach a worker that is still loading (and answer 503)."""
    loaded = [line for line in server.log().splitlines() if '"event": "model_loaded"' in line]
    assert len(loaded) == 2, server.log()[-2000:]
    ready = httpx.get(server.url + "/v1/readyz").json()
    assert ready["ready"] and ready["workers"] == 2
    assert ready["worker_devices"] == {"1": "cpu", "2": "cpu"}


def test_logs_are_json_with_request_fields_and_no_raw_values(server):
    ok = httpx.post(server.url + "/v1/predict/single", json=body_with_sentinels(),
                    headers={"X-Request-ID": "obs-req-1"}, timeout=60)
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "obs-req-1"
    bad = body_with_sentinels()
    bad["data"][3] = [1.0, "98765.4321x", 2.0, 3.0]
    assert httpx.post(server.url + "/v1/predict/single", json=bad, timeout=60).status_code == 400
    short = {"data": [[float(SENTINELS[0])] * 4], "pred_len": 2}
    assert httpx.post(server.url + "/v1/predict/single", json=short,
                      headers={"X-Request-ID": "obs-req-2"}, timeout=60).status_code == 400
    time.sleep(1)
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert len(records) >= 5
    mine = [r for r in records if r.get("request_id") == "obs-req-1" and r.get("event") == "request"]
    assert len(mine) == 1
    entry = mine[0]
    for field in ("timestamp", "level", "request_id", "path", "latency_ms", "model_version",
                  "device", "result_status", "trace_id"):
        assert entry.get(field) is not None, field
    assert entry["result_status"] == 200 and entry["path"] == "/v1/predict/single"
    assert entry["input"]["rows"] == [21] and entry["input"]["time_range"][0] == "2024-05-01T10:00:00"
    failed = [r for r in records if r.get("request_id") == "obs-req-2"]
    assert failed and failed[0]["result_status"] == 400 and failed[0]["level"] == "WARNING"
    assert any(r.get("event") == "access" and r.get("result_status") == 400 for r in records)
    assert any(r.get("event") == "model_loaded" for r in records)
    log_text = server.log()
    for value in SENTINELS + ("98765.4321",):
        assert value not in log_text, f"raw input value {value} leaked into the logs"


def bad_requests(server) -> float:
    text = httpx.get(server.url + "/v1/metrics").text
    return sum(float(v) for v in re.findall(
        r'^kronos_requests_total\{[^}]*route="/v1/predict/single"[^}]*status="400"[^}]*\} ([0-9.e+-]+)$',
        text, re.MULTILINE))


def test_metrics_move_with_requests_and_errors(server):
    names = ["kronos_requests_total", "kronos_request_duration_seconds_count",
             "kronos_inference_duration_seconds_count", "kronos_batch_size_count",
             "kronos_queue_wait_seconds_count", "kronos_series_length_count", "kronos_horizon_count"]
    before = {n: scrape(server, n) for n in names}
    errors_before = bad_requests(server)
    for _ in range(3):
        assert httpx.post(server.url + "/v1/predict/single", json=body_with_sentinels(),
                          timeout=60).status_code == 200
    assert httpx.post(server.url + "/v1/predict/single", json={"data": [[1.0] * 4], "pred_len": 0},
                      timeout=60).status_code == 400
    after = {n: scrape(server, n) for n in names}
    assert after["kronos_requests_total"] - before["kronos_requests_total"] == 4
    assert after["kronos_series_length_count"] - before["kronos_series_length_count"] == 3
    for name in names[1:]:
        assert after[name] > before[name], name
    text = httpx.get(server.url + "/metrics").text
    assert re.search(r'kronos_requests_total\{[^}]*status="400"', text)
    assert bad_requests(server) == errors_before + 1
    assert scrape(server, "kronos_model_info") == 2, "one model per worker, two workers"
    assert scrape(server, "kronos_model_load_seconds_count") == 2


def test_spans_reach_the_collector_with_the_callers_parent(server, receiver):
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
    response = httpx.post(server.url + "/v1/predict/single", json=body_with_sentinels(),
                          headers={"traceparent": traceparent}, timeout=60)
    assert response.status_code == 200 and response.headers["x-trace-id"] == TRACE_ID
    deadline = time.time() + 30
    wanted = {"validation", "queue_wait", "engine", "postprocess"}
    while time.time() < deadline:
        names = {s.name for s in receiver.spans_of(TRACE_ID)}
        if wanted <= names:
            break
        time.sleep(0.5)
    spans = receiver.spans_of(TRACE_ID)
    assert wanted <= {s.name for s in spans}, {s.name for s in spans}
    by_id = {s.span_id.hex(): s for s in spans}
    roots = [s for s in spans if s.parent_span_id.hex() == PARENT_SPAN]
    assert roots, "the server span must be a child of the caller's span"
    engine = next(s for s in spans if s.name == "engine")
    attributes = {a.key: a.value for a in engine.attributes}
    assert attributes["kronos.model_version"].string_value
    # every span of ours hangs off the request's server span
    for span in spans:
        if span.name in wanted:
            parent = span.parent_span_id.hex()
            while parent in by_id:
                parent = by_id[parent].parent_span_id.hex()
            assert parent == PARENT_SPAN


def test_dashboard_and_scrape_config_use_metrics_the_service_exposes(server):
    import yaml

    from local_server import ROOT

    score_one_outcome(server)

    exposed = set(re.findall(r"^# TYPE (\S+) ", httpx.get(server.url + "/metrics").text, re.MULTILINE))
    exposed |= {f"{name}_{suffix}" for name in exposed for suffix in ("bucket", "sum", "count", "total")}
    dashboard = json.loads((ROOT / "configuration" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("request rate", "error rate", "p99", "batch size", "queue wait"):
        assert topic in titles
    used = set(re.findall(r"\b(kronos_[a-z_]+)", " ".join(exprs)))
    assert used and used <= exposed, used - exposed
    scrape_config = yaml.safe_load((ROOT / "configuration" / "prometheus.yml").read_text())
    job = scrape_config["scrape_configs"][0]
    assert httpx.get(server.url + job["metrics_path"]).status_code == 200
