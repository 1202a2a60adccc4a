"""The BentoML service over HTTP and through the BentoML client, against a real server."""
from __future__ import annotations

import asyncio
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import bentoml
import httpx
import numpy as np
import pytest

from conftest import TEST_DEVICE, make_candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
from local_server import import_dev_model, running_server

SERVER_DEVICE = os.environ.get("KRONOS_DEVICE", "cpu")  # servers inherit it (GPU runs set cuda)
OLD_EXAMPLE = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6],
                        [10.6, 10.8, 10.3, 10.5]], "pred_len": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    tags = [import_dev_model(home, "kronos-tiny", seed=1), import_dev_model(home, "kronos-tiny", seed=2)]
    return home, tags


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    home, (tag_a, tag_b) = store
    env = {"KRONOS_VARIANTS": f"{tag_a}=50,{tag_b}=50", "KRONOS_DEFAULT_PRED_LEN": "7",
           "KRONOS_MAX_PRED_LEN": "40", "KRONOS_MAX_LOOKBACK": "300", "KRONOS_MAX_SAMPLE_COUNT": "8",
           "KRONOS_MAX_BATCH_ITEMS": "5"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def post(server, route, body, **kwargs):
    return httpx.post(server.url + route, json=body, timeout=60, **kwargs)


def series_body(rows, data_seed, **extra):
    frame, stamps = make_candles(rows, seed=data_seed)
    body = {"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps]}
    body.update(extra)
    return body


def metric_values(server, name):
    text = httpx.get(server.url + "/v1/metrics", timeout=10).text
    return {labels: float(value) for labels, value in
            re.findall(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE)}


def test_health_and_readiness(server, store):
    assert httpx.get(server.url + "/v1/healthz").json()["status"] == "alive"
    ready = httpx.get(server.url + "/v1/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["device"] == SERVER_DEVICE and body["max_context"] == 512 and body["threads"] == 1
    assert {v["model"] for v in body["variants"]} == set(store[1])
    assert body["model"] in store[1] and body["model_version"]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200
    assert "kronos_model_info" in httpx.get(server.url + "/metrics").text


def test_old_service_example_works_as_is(server):
    response = post(server, "/v1/predict/single", OLD_EXAMPLE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 3
    assert set(body["predictions"][0]) == {"timestamp", "open", "high", "low", "close", "volume",
                                           "amount"}
    assert body["model"] and body["model_version"] and body["device"] == SERVER_DEVICE
    assert response.headers["x-request-id"] == body["request_id"]


def test_defaults_and_overrides(server):
    body = series_body(40, 1)
    assert len(post(server, "/v1/predict/single", body).json()["predictions"]) == 7
    asked = post(server, "/v1/predict/single", {**body, "pred_len": 5, "quantiles": [0.1, 0.9],
                                                 "sample_count": 4, "seed": 3, "temperature": 0.7,
                                                 "top_p": 0.8, "lookback": 30},
                 headers={"X-Request-ID": "req-123"}).json()
    assert len(asked["predictions"]) == 5 and asked["request_id"] == "req-123"
    assert set(asked["quantiles"]) == {"0.1", "0.9"} and asked["seed"] == 3
    low, high = asked["quantiles"]["0.1"], asked["quantiles"]["0.9"]
    assert all(lo["close"] <= hi["close"] for lo, hi in zip(low, high))


@pytest.mark.parametrize("change,field", [
    ({"pred_len": 41}, "pred_len"), ({"lookback": 301}, "lookback"), ({"sample_count": 9}, "sample_count"),
    ({"top_p": 2.0}, "top_p"), ({"temperature": 0}, "temperature"), ({"quantiles": [1.5]}, "quantiles[0]"),
    ({"quantiles": [0.5, 1.0]}, "quantiles"),
    ({"data": [[1, 2, 3]] * 5, "timestamps": None}, "data[0]"),
    ({"data": [[1, 2, 3, 4]], "timestamps": None}, "data"),
    ({"timestamps": ["2024-01-01"] * 3}, "timestamps"), ({"columns": ["open", "x", "low", "close", "volume"]}, "columns"),
    ({"model_version": "nope"}, "model_version"), ({"future_timestamps": ["2020-01-01"]}, "future_timestamps"),
])
def test_bad_requests_get_400_naming_the_field(server, change, field):
    response = post(server, "/v1/predict/single", {**series_body(20, 2), **change})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == field and field in body["error"]


def test_schema_errors_get_400_naming_the_field(server):
    response = post(server, "/v1/predict/single", {"data": [[1, "x", 2, 3]], "pred_len": 2})
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"][:2] == ["data", 0]
    unknown = post(server, "/v1/predict/single", {**OLD_EXAMPLE, "colour": "red"})
    assert unknown.status_code == 400 and "colour" in unknown.text
    assert post(server, "/v1/predict/single", {"pred_len": 3}).status_code == 400


def test_batch_answers_in_order_and_names_bad_items(server):
    bodies = [series_body(30 + i * 10, i, pred_len=2 + i, top_k=1) for i in range(3)]
    response = post(server, "/v1/predict/batch", {"batch": bodies})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [len(r["predictions"]) for r in results] == [2, 3, 4]
    singles = [post(server, "/v1/predict/single", {**b, "model_version": results[i]["model_version"]}).json()
               for i, b in enumerate(bodies)]
    for batched, single in zip(results, singles):
        np.testing.assert_allclose([p["close"] for p in batched["predictions"]],
                                   [p["close"] for p in single["predictions"]], rtol=1e-5)
    bodies[1]["pred_len"] = 0
    bad = post(server, "/v1/predict/batch", {"batch": bodies})
    assert bad.status_code == 400 and bad.json()["field"] == "batch[1].pred_len"
    too_many = post(server, "/v1/predict/batch", {"batch": [OLD_EXAMPLE] * 6})
    assert too_many.status_code == 400 and too_many.json()["field"] == "batch"


def test_concurrent_requests_are_batched(server, store):
    tag = store[1][0]
    name = "kronos_batch_size"
    before = {m: metric_values(server, f"{name}_{m}") for m in ("count", "sum")}
    bodies = [series_body(20 + 7 * i, 10 + i, pred_len=3 + i % 4, sample_count=1 + i % 3,
                          temperature=0.5 + 0.1 * i, seed=i, model_version=tag) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda b: post(server, "/v1/predict/single", b), bodies))
    assert all(r.status_code == 200 for r in responses)
    after = {m: metric_values(server, f"{name}_{m}") for m in ("count", "sum")}
    label = next(k for k in after["count"] if tag.split(":")[1] in k)
    steps = after["count"][label] - before["count"].get(label, 0)
    series_steps = after["sum"][label] - before["sum"].get(label, 0)
    assert series_steps == sum(3 + i % 4 - 1 for i in range(12))  # decode steps after step 0
    assert steps < series_steps, "12 concurrent requests never shared a decode step"
    # Batched responses equal single runs with the same seed.
    alone = post(server, "/v1/predict/single", bodies[5]).json()["predictions"]
    together = responses[5].json()["predictions"]
    assert [p["timestamp"] for p in alone] == [p["timestamp"] for p in together]
    np.testing.assert_allclose([[p[c] for c in ("open", "close", "volume")] for p in alone],
                               [[p[c] for c in ("open", "close", "volume")] for p in together],
                               rtol=1e-4)


def test_ab_split_pinning_and_sticky_keys(server, store):
    tag_a, tag_b = store[1]
    version_a = tag_a.split(":")[1]
    pinned = {post(server, "/v1/predict/single", {**OLD_EXAMPLE, "model_version": version_a}
                   ).json()["model_version"] for _ in range(3)}
    assert pinned == {version_a}
    by_tag = post(server, "/v1/predict/single", {**OLD_EXAMPLE, "model_version": tag_b}).json()
    assert by_tag["model"] == tag_b
    sticky = {post(server, "/v1/predict/single", {**OLD_EXAMPLE, "sticky_key": "user-17"}
                   ).json()["model_version"] for _ in range(4)}
    assert len(sticky) == 1
    served = {post(server, "/v1/predict/single", {**OLD_EXAMPLE, "sticky_key": f"user-{i}"}
                   ).json()["model_version"] for i in range(24)}
    assert served == {tag_a.split(":")[1], tag_b.split(":")[1]}
    counted = metric_values(server, "kronos_requests_total")
    assert any(tag_a.split(":")[1] in k for k in counted) and any(tag_b.split(":")[1] in k for k in counted)


def test_responses_equal_the_runtime_called_directly(server, store):
    tag = store[1][1]
    body = series_body(60, 33, pred_len=6, sample_count=3, seed=11, temperature=0.9, top_p=0.85,
                       quantiles=[0.5], model_version=tag)
    served = post(server, "/v1/predict/single", body).json()
    home = store[0]
    entry_dir = home / "models" / tag.split(":")[0] / tag.split(":")[1]
    # seeded samples are reproducible on the same kind of device (CPU and CUDA generators differ);
    # on a GPU run the server gets KRONOS_DEVICE=cuda from the environment
    forecaster = KronosForecaster.from_pretrained(entry_dir / "model", entry_dir / "tokenizer",
                                                  device=TEST_DEVICE)
    frame, stamps = make_candles(60, seed=33)
    direct = forecaster.forecast([ForecastRequest(
        frame, 6, timestamps=stamps, quantiles=[0.5],
        sampling=SamplingParams(temperature=0.9, top_p=0.85, sample_count=3, seed=11))])[0]
    np.testing.assert_allclose([p["close"] for p in served["predictions"]], direct.mean["close"],
                               rtol=1e-5)
    np.testing.assert_allclose([p["high"] for p in served["quantiles"]["0.5"]],
                               direct.quantiles[0.5]["high"], rtol=1e-5)


def test_bentoml_clients(server):
    with bentoml.SyncHTTPClient(server.url) as client:
        single = client.predict_single(data=OLD_EXAMPLE["data"], pred_len=2)
        assert len(single["predictions"]) == 2
        batch = client.predict_batch(batch=[OLD_EXAMPLE, {**OLD_EXAMPLE, "pred_len": 1}])
        assert [len(r["predictions"]) for r in batch["results"]] == [3, 1]

    async def call_async():
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return await asyncio.gather(*(client.predict_single(data=OLD_EXAMPLE["data"], pred_len=i)
                                          for i in (1, 2, 3)))
    assert [len(r["predictions"]) for r in asyncio.run(call_async())] == [1, 2, 3]


def test_readiness_fails_clearly_when_the_model_cannot_load(tmp_path):
    env = {"KRONOS_MODEL": str(tmp_path / "missing-model"), "KRONOS_DEV_FALLBACK": "false"}
    with running_server(tmp_path / "home", env, tmp_path / "server.log", wait_ready=False) as srv:
        for _ in range(50):
            ready = httpx.get(srv.url + "/v1/readyz")
            if ready.json()["status"] != "loading":
                break
            time.sleep(0.2)
        assert ready.status_code == 503 and "missing-model" in ready.json()["error"]
        assert httpx.get(srv.url + "/readyz").status_code == 503
        response = post(srv, "/v1/predict/single", OLD_EXAMPLE)
        assert response.status_code == 503 and "missing-model" in response.json()["error"]
        assert srv.process.poll() is None, "the worker must stay up"


def test_offline_default_serves_a_dev_checkpoint_loudly(tmp_path):
    env = {"KRONOS_MODEL": "", "KRONOS_VARIANTS": "", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    with running_server(tmp_path / "home", env, tmp_path / "server.log", wait_ready=False) as srv:
        seen = []  # generating + loading the small dev checkpoint takes seconds: readyz says so
        for _ in range(600):
            ready = httpx.get(srv.url + "/v1/readyz")
            seen.append((ready.status_code, ready.json()["status"]))
            if ready.status_code == 200:
                break
            time.sleep(0.1)
        assert seen[0] == (503, "loading") and seen[-1] == (200, "ready"), seen[:3]
        ready = httpx.get(srv.url + "/v1/readyz").json()
        assert ready["dev_checkpoint"] is True and "random weights" in ready["warning"]
        assert ready["model"].startswith("kronos-dev:") and ready["max_context"] == 512
        response = post(srv, "/v1/predict/single", OLD_EXAMPLE).json()
        assert response["model"].startswith("kronos-dev:")
        assert "GENERATED DEV CHECKPOINT" in srv.log()


def test_cpu_threads_are_shared_between_workers():
    from kronos_serving.settings import Settings

    assert Settings(cpu=2, workers=2).torch_threads == 1
    assert Settings(cpu=8, workers=2).torch_threads == 4
    assert Settings(cpu=1, workers=4).torch_threads == 1
    assert Settings(cpu=8, workers=2, threads=3).torch_threads == 3


def test_gpu_resource_hint_only_for_cuda_devices():
    from kronos_serving.settings import Settings
    from service import service_resources

    assert "gpu" not in service_resources(Settings(device="cpu"))
    assert service_resources(Settings(device="cuda:0", gpu=1, cpu=4))["gpu"] == 1


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_cuda_graphs_setting_reaches_the_runtime(tiny_checkpoint, monkeypatch, cuda_graphs):
    from kronos_serving.model_store import ModelSource
    from kronos_serving.settings import load_settings
    from kronos_serving.variants import load_variant

    requested = {}
    load = KronosForecaster.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        requested.update(kwargs)
        return load(cls, *args, **kwargs)
    monkeypatch.setattr(KronosForecaster, "from_pretrained", classmethod(spy))
    settings = load_settings({"KRONOS_DEVICE": TEST_DEVICE,
                              "KRONOS_CUDA_GRAPHS": "true" if cuda_graphs else "false"})
    variant = load_variant(settings, ModelSource("tiny", "local", *tiny_checkpoint), 1.0)
    assert requested["steps_mode"] == (None if cuda_graphs else "eager")  # None: graphs on CUDA
    on_gpu = TEST_DEVICE.startswith("cuda")
    assert variant.forecaster.steps_mode == ("graphs" if cuda_graphs and on_gpu else "eager")
