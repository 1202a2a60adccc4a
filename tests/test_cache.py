"""Repeated-forecast cache: per-worker LRU and a real Redis shared by two servers; never across
model versions; only deterministic (greedy or seeded) requests."""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import httpx
import pytest

from kronos_serving.cache import cache_key, is_deterministic
from kronos_serving.cache.memory import LRU
from kronos_serving.cache.shared import RedisStore
from kronos_serving.schemas import SingleRequest
from kronos_serving.settings import Settings
from local_server import free_port, import_dev_model, running_server

ROWS = [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6],
        [10.6, 10.8, 10.3, 10.5]]
GREEDY = {"data": ROWS, "pred_len": 3, "top_k": 1}


def test_only_greedy_or_seeded_requests_are_cacheable_and_keys_separate_versions():
    settings = Settings()
    assert is_deterministic(SingleRequest(**GREEDY), settings)
    assert is_deterministic(SingleRequest(data=ROWS, seed=3), settings)
    assert not is_deterministic(SingleRequest(data=ROWS), settings)
    assert is_deterministic(SingleRequest(data=ROWS), Settings(default_top_k=1))
    body = SingleRequest(**GREEDY)
    key = cache_key(body, "kronos:v1", "v1", settings)
    assert key == cache_key(SingleRequest(**GREEDY, sticky_key="user-1"), "kronos:v1", "v1", settings)
    assert key != cache_key(body, "kronos:v2", "v2", settings)
    assert key != cache_key(SingleRequest(**{**GREEDY, "pred_len": 4}), "kronos:v1", "v1", settings)
    assert key != cache_key(body, "kronos:v1", "v1", Settings(default_pred_len=8))
    assert key != cache_key(body, "kronos:v1", "v1", Settings(device="cuda"))


def test_the_lru_is_bounded_and_keeps_the_recently_used():
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert len(lru) == 2 and lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3


def test_an_unreachable_redis_is_a_miss_not_an_error():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", ttl_s=60)

    async def both():
        await store.put("k", {"x": 1})
        return await store.get("k")

    assert asyncio.run(both()) is None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    work = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(work)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, redis_url):
    """Two servers (two replicas) with the same A/B variants and the same Redis."""
    home = tmp_path_factory.mktemp("home")
    first, second = import_dev_model(home, "kronos-cache", seed=1), import_dev_model(home, "kronos-cache", seed=2)
    env = {"KRONOS_VARIANTS": f"{first}=50,{second}=50", "KRONOS_CACHE_URL": redis_url}
    logs = tmp_path_factory.mktemp("logs")
    with running_server(home, env, logs / "a.log") as a, running_server(home, env, logs / "b.log") as b:
        yield a, b, first.split(":")[1], second.split(":")[1]


def post(server, body, request_id="r"):
    response = httpx.post(server.url + "/v1/predict/single", json=body, timeout=60,
                          headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    return response


def scrape(server, pattern):
    text = httpx.get(server.url + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{pattern}[^\n]* ([0-9.e+-]+)$", text, re.M))


def test_a_repeated_greedy_request_is_answered_from_the_cache(servers):
    a, _, v1, _ = servers
    body = {**GREEDY, "model_version": v1, "pred_len": 4}
    runs_before = scrape(a, "kronos_engine_admissions_total")
    first = post(a, body, "first")
    second = post(a, body, "second")
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert second.json()["predictions"] == first.json()["predictions"]
    assert second.json()["request_id"] == "second" and second.json()["model_version"] == v1
    assert scrape(a, "kronos_engine_admissions_total") == runs_before + 1, "a hit must not run the model"
    assert scrape(a, 'kronos_cache_lookups_total{result="hit"') >= 1


def test_seeded_requests_are_cached_and_unseeded_sampling_never_is(servers):
    a, _, v1, _ = servers
    seeded = {"data": ROWS, "pred_len": 2, "seed": 11, "sample_count": 2, "model_version": v1}
    assert post(a, seeded).headers["x-cache"] == "miss"
    assert post(a, seeded).headers["x-cache"] == "hit"
    sampled = {"data": ROWS, "pred_len": 2, "model_version": v1}
    assert "x-cache" not in post(a, sampled).headers and "x-cache" not in post(a, sampled).headers


def test_never_across_model_versions(servers):
    a, _, v1, v2 = servers
    body = {**GREEDY, "pred_len": 5}
    on_v1 = post(a, {**body, "model_version": v1})
    on_v2 = post(a, {**body, "model_version": v2})
    assert on_v1.headers["x-cache"] == "miss" and on_v2.headers["x-cache"] == "miss"
    assert on_v2.json()["model_version"] == v2 and on_v2.json()["predictions"] != on_v1.json()["predictions"]
    assert post(a, {**body, "model_version": v2}).json()["predictions"] == on_v2.json()["predictions"]


def test_redis_shares_results_between_replicas(servers, redis_url):
    a, b, v1, _ = servers
    body = {**GREEDY, "pred_len": 6, "model_version": v1}
    on_a = post(a, body)
    on_b = post(b, body)
    assert on_a.headers["x-cache"] == "miss" and on_b.headers["x-cache"] == "hit"
    assert on_b.json()["predictions"] == on_a.json()["predictions"]
    import redis

    assert redis.Redis.from_url(redis_url).keys("kronos:forecast:*")
    batch = httpx.post(b.url + "/v1/predict/batch", json={"batch": [body, body]}, timeout=60)
    assert batch.headers["x-cache"] == "hit" and len(batch.json()["results"]) == 2
