"""Bad input, overload, timeouts, faults and shutdown against a real server (issue #6)."""
from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from local_server import import_dev_model, readiness_after_loading, running_server

FUZZ_EXAMPLES = int(os.environ.get("KRONOS_FUZZ_EXAMPLES", "150"))
CANDLES = [[10.0 + i * 0.1, 10.6 + i * 0.1, 9.7 + i * 0.1, 10.2 + i * 0.1, 1000.0 + i]
           for i in range(40)]
LIMITS = {"KRONOS_MAX_PRED_LEN": "16", "KRONOS_DEFAULT_PRED_LEN": "4", "KRONOS_MAX_LOOKBACK": "64",
          "KRONOS_MAX_SAMPLE_COUNT": "4", "KRONOS_MAX_BATCH_ITEMS": "4"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    return path, import_dev_model(path, "kronos-tiny", seed=4), import_dev_model(
        path, "kronos-mini", shape="mini", seed=5)


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    with running_server(home[0], {"KRONOS_MODEL": home[1], **LIMITS},
                        tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def post(server, body, route="/v1/predict/single", **kwargs):
    kwargs.setdefault("timeout", 60)
    if isinstance(body, (bytes, str)):
        kwargs.setdefault("headers", {"Content-Type": "application/json"})
        return httpx.post(server.url + route, content=body, **kwargs)
    return httpx.post(server.url + route, json=body, **kwargs)


def plausible(body: dict, limit: int) -> dict:
    """Steer a schema-valid body inside the semantic rules and limits, so it reaches the model:
    one row width, high >= low, magnitudes and sizes within the limits, no random time strings."""
    if not isinstance(body, dict):  # no body at all (the request body is optional)
        return body
    if "batch" in body:
        return {"batch": [plausible(item, limit) for item in body["batch"][:limit]] or [
            {"data": CANDLES}]}
    body = {k: v for k, v in body.items() if v is not None
            and k not in ("model_version", "columns", "timestamps", "future_timestamps")}
    width = len(body["data"][0])
    clamp = [[max(-1e15, min(1e15, value)) for value in row[:width]]
             for row in body["data"][-64:] if len(row) >= width]
    body["data"] = [[row[0], max(row[1], row[2]), min(row[1], row[2]), *row[3:]] for row in clamp]
    for name, low, high in (("pred_len", 1, 16), ("sample_count", 1, 4), ("lookback", 2, 64)):
        if name in body:
            body[name] = max(low, min(high, body[name]))
    for name in ("temperature", "top_p"):
        if body.get(name) == 0:
            del body[name]
    if "quantiles" in body:
        body["quantiles"] = [q for q in body["quantiles"] if 0 < q < 1]
    return body


def test_fuzzing_the_openapi_schema_never_yields_a_5xx(server):
    schema = schemathesis.openapi.from_url(server.url + "/docs.json")
    counts: collections.Counter = collections.Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.label.startswith("POST /v1/predict")]
    assert len(operations) == 2
    for operation in operations:
        for mode, steer in ((GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False),
                            (GenerationMode.POSITIVE, True)):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                if steer:
                    case.body = plausible(case.body, 4)
                response = case.call(base_url=server.url, timeout=60)
                label = f"{operation.label} {mode.value}{' steered' if steer else ''}"
                counts[(label, response.status_code)] += 1
                assert response.status_code < 500, (response.status_code, response.text[:500])
                if mode is GenerationMode.NEGATIVE:
                    assert 400 <= response.status_code < 500, response.text[:500]
                if response.status_code == 400:
                    assert response.json()["field"], response.text[:500]
            run()
    report = {f"{label} -> {status}": n for (label, status), n in sorted(counts.items())}
    print("schemathesis cases:", sum(counts.values()), json.dumps(report, indent=1))
    assert sum(counts.values()) >= 6 * FUZZ_EXAMPLES * 0.8
    assert sum(n for (label, status), n in counts.items() if status == 200) >= FUZZ_EXAMPLES / 2
    assert "Traceback" not in server.log()


BAD_BODIES = [
    ({"data": [[10, 9, 11, 10]] * 5}, "data"),                                   # high < low
    ({"data": [[1e300, 1e300, 1e300, 1e300]] * 5}, "data"),                      # absurd magnitude
    ({"data": [[1, 2, 0, 1, -1e18]] * 5}, "data"),
    ({"data": CANDLES[:3], "timestamps": ["-0001-01-01", "0000-01-01", "0001-01-01"]}, "timestamps"),
    ({"data": CANDLES[:3], "timestamps": [-3, -2, -1]}, "timestamps[0]"),
    ({"data": CANDLES[:3], "timestamps": ["2262-04-01", "2262-04-05", "2262-04-09"]}, "timestamps"),
    ({"data": CANDLES[:3], "timestamps": ["2024-01-03", "2024-01-02", "2024-01-04"]}, "timestamps"),
    ({"data": []}, "data"),
    ({"data": [[]] * 3}, "data[0]"),
    ({"data": [[1, 2, 3, 4, 5, 6, 7]] * 3}, "data[0]"),
    ({"data": [[1, 2, 0, 1], [1, 2, 0, 1, 5]]}, "data"),
    ({"data": [["1", "x", "0", "1"]] * 3}, "data[0][1]"),
    ({"data": "prices"}, "data"),
    ({"data": CANDLES, "pred_len": "ten"}, "pred_len"),
    ({"data": CANDLES, "pred_len": 10 ** 30}, "pred_len"),
    ({"data": CANDLES, "colour": "red"}, "colour"),
    ({"batch": []}, "batch"),
    ({"batch": [{"data": CANDLES}] * 5}, "batch"),
    ({"batch": [{"data": CANDLES}, {"data": [[10, 9, 11, 10]] * 3}]}, "batch[1].data"),
    ({}, "data"),
    ([CANDLES], "body"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES)
def test_bad_input_gets_a_400_naming_the_field(server, body, field):
    route = "/v1/predict/batch" if isinstance(body, dict) and "batch" in body else "/v1/predict/single"
    response = post(server, body, route)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field, response.text


@pytest.mark.parametrize("raw,field", [
    ('{"data": [[NaN, 1, 0, 1], [1, 2, 0, 1]]}', "data"),
    ('{"data": [[Infinity, 1, 0, 1], [1, 2, 0, 1]]}', "data"),
    ('{"data": [[1, 2, 0, 1], [1, 2, 0, 1]]', "body"),
    ("\x00\xff garbage", "body"),
])
def test_malformed_json_gets_a_400(server, raw, field):
    response = post(server, raw.encode("latin-1"))
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field, response.text


def test_wrong_content_type_gets_415(server):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(server.url + "/v1/predict/single", content=b"data=1",
                              headers={"Content-Type": content_type})
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["field"] == "Content-Type"
    charset = post(server, json.dumps({"data": CANDLES[:3], "pred_len": 1}),
                   headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text


def test_a_failing_model_load_keeps_the_worker_up(home, tmp_path):
    corrupt = tmp_path / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{\"d_model\": 8")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    env = {"KRONOS_MODEL": str(corrupt), "KRONOS_TOKENIZER": str(corrupt),
           "KRONOS_DEV_FALLBACK": "false"}
    with running_server(home[0], env, tmp_path / "server.log", wait_ready=False) as srv:
        ready = readiness_after_loading(srv)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "corrupt-model" in ready.json()["error"]
        time.sleep(2)  # no crash loop: the same worker keeps answering
        assert srv.process.poll() is None
        assert post(srv, {"data": CANDLES}).status_code == 503
        assert srv.log().count("Service kronos initialized") == 1
        assert "model load failed" in srv.log()


SLOW = {"data": [[10 + i * 0.01, 10.5 + i * 0.01, 9.8 + i * 0.01, 10.2 + i * 0.01]
                 for i in range(300)], "pred_len": 200, "sample_count": 8}


def test_overload_sheds_fast_with_retry_after_and_recovers(home, tmp_path):
    env = {"KRONOS_MODEL": home[2], "KRONOS_MAX_QUEUE": "2", "KRONOS_MAX_BATCH_SERIES": "1"}
    with running_server(home[0], env, tmp_path / "server.log") as srv:
        worker_log_lines = srv.log().count("Service kronos initialized")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: (time.perf_counter(), post(srv, SLOW, timeout=120)),
                                    range(8)))
        shed = [(t, r) for t, r in answers if r.status_code == 503]
        served = [r for _, r in answers if r.status_code == 200]
        assert len(shed) + len(served) == 8, [r.text[:200] for _, r in answers]
        assert shed and len(served) >= 3  # one running + two waiting at any time
        for _, response in shed:
            assert response.headers["Retry-After"] == "1" and "overloaded" in response.json()["error"]
        quick = {"data": CANDLES, "pred_len": 2}
        assert post(srv, quick).status_code == 200  # recovered by itself
        assert httpx.get(srv.url + "/v1/readyz").status_code == 200
        assert srv.log().count("Service kronos initialized") == worker_log_lines


def test_requests_past_the_timeout_get_504_and_stop_costing(home, tmp_path):
    """A timed-out request leaves the engine at its next step: the request queued behind it
    (one live series at a time) is answered within its own timeout."""
    env = {"KRONOS_MODEL": home[2], "KRONOS_TIMEOUT_S": "2", "KRONOS_MAX_BATCH_SERIES": "1"}
    with running_server(home[0], env, tmp_path / "server.log") as srv:
        slow_answer = {}

        def slow() -> None:
            started = time.perf_counter()
            slow_answer["response"] = post(srv, {**SLOW, "pred_len": 400})
            slow_answer["seconds"] = time.perf_counter() - started
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(1.0)  # queued behind the slow one, with 2 s of its own
        quick = post(srv, {"data": CANDLES, "pred_len": 2})
        thread.join(60)
        response = slow_answer["response"]
        assert response.status_code == 504, response.text
        assert slow_answer["seconds"] < 3.5
        assert "timed out" in response.json()["error"] and response.headers["Retry-After"]
        assert quick.status_code == 200, quick.text


def test_sigterm_fails_readiness_then_drains_in_flight_requests(home, tmp_path):
    env = {"KRONOS_MODEL": home[2], "KRONOS_DRAIN_DELAY_S": "2"}
    with running_server(home[0], env, tmp_path / "server.log") as srv:
        answers: dict[str, httpx.Response] = {}

        def forecast(name: str) -> None:
            answers[name] = post(srv, SLOW, timeout=120)

        in_flight = threading.Thread(target=forecast, args=("in_flight",))
        in_flight.start()
        time.sleep(0.5)
        os.kill(srv.process.pid, signal.SIGTERM)  # what Kubernetes does: PID 1 only
        time.sleep(0.5)
        ready = httpx.get(srv.url + "/v1/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        late = threading.Thread(target=forecast, args=("during_grace",))
        late.start()  # the load balancer has not caught up yet: still served
        in_flight.join(120)
        late.join(120)
        assert srv.process.wait(60) == 0
        assert answers["in_flight"].status_code == 200, answers["in_flight"].text
        assert answers["during_grace"].status_code == 200, answers["during_grace"].text
        assert len(answers["in_flight"].json()["predictions"]) == 200
        assert '"event": "draining"' in srv.log()
