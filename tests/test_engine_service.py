"""The engine behind the service: cost control at admission, answers in order of completion,
and the same seeded request gives the same numbers whatever else shares the engine."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import make_candles
from kronos_runtime.engine import series_cost
from local_server import import_dev_model, metric_total, running_server

MAX_COST = 150_000
BUDGET = 250_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tag = import_dev_model(home, "kronos-tiny", seed=9)
    env = {"KRONOS_MODEL": tag, "KRONOS_MAX_REQUEST_COST": str(MAX_COST),
           "KRONOS_API_KEYS": "budgeted,other", "KRONOS_COST_BUDGET_PER_MINUTE": str(BUDGET),
           "KRONOS_CACHE_MAX_ENTRIES": "0"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def body(rows: int, pred_len: int, paths: int = 1, seed: int = 0, **extra) -> dict:
    frame, stamps = make_candles(rows, seed=seed)
    out = {"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps],
           "pred_len": pred_len, "sample_count": paths, "seed": seed}
    out.update(extra)
    return out


def post(server, payload, key="other"):
    return httpx.post(server.url + "/v1/predict/single", json=payload, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def test_requests_over_the_cost_cap_get_400_naming_the_limit(server):
    costly = body(500, 200, 32)
    assert series_cost(500, 200, 32, 512, True) > MAX_COST
    response = post(server, costly)
    assert response.status_code == 400, response.text
    assert "max_request_cost" in response.json()["error"]
    batch = httpx.post(server.url + "/v1/predict/batch", json={"batch": [body(30, 2), costly]},
                       headers={"Authorization": "Bearer other"}, timeout=60)
    assert batch.status_code == 400 and batch.json()["field"] == "batch[1]"
    assert post(server, body(30, 2)).status_code == 200


def test_a_key_past_its_cost_budget_gets_429_others_do_not(server):
    payload = body(500, 120, 8, seed=1)
    cost = series_cost(500, 120, 8, 512, True)
    assert cost < MAX_COST and 3 * cost > BUDGET
    statuses = [post(server, payload, key="budgeted") for _ in range(3)]
    refused = [r for r in statuses if r.status_code == 429]
    assert refused and statuses[0].status_code == 200
    assert refused[0].json()["field"] == "cost_budget_per_minute"
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert post(server, body(30, 2)).status_code == 200  # another key still has its budget


def test_short_requests_finish_before_a_long_one_sent_first(server):
    finished = []

    def send(name, payload):
        post(server, payload)
        finished.append(name)
    long = threading.Thread(target=send, args=("long", body(100, 400, 8, seed=3)))
    long.start()
    time.sleep(0.3)
    shorts = [threading.Thread(target=send, args=(f"short-{i}", body(40, 3, seed=10 + i)))
              for i in range(3)]
    for thread in shorts:
        thread.start()
    for thread in [long, *shorts]:
        thread.join(120)
    assert finished[-1] == "long", finished  # answered in order of completion, not of batch


def test_the_same_seeded_request_gives_identical_numbers_under_concurrent_traffic(server):
    target = body(120, 24, 4, seed=21, top_p=0.9, quantiles=[0.1, 0.9])
    alone = post(server, target).json()
    company = [body(40 + 30 * i, 5 + 7 * i, 1 + i % 3, seed=30 + i) for i in range(8)]
    with ThreadPoolExecutor(9) as pool:
        crowd = [pool.submit(post, server, b) for b in company[:4]]
        together = pool.submit(post, server, target)
        crowd += [pool.submit(post, server, b) for b in company[4:]]
        assert all(f.result().status_code == 200 for f in crowd)
        together = together.result().json()
    assert together["predictions"] == alone["predictions"]
    assert together["quantiles"] == alone["quantiles"]


def queued_series(server) -> float:
    return metric_total(server, "kronos_queued_series")


def test_a_client_that_leaves_stops_costing_at_once(server):
    long = body(20, 500, 32, seed=5)  # about 11 s of work on one thread
    with pytest.raises(httpx.TimeoutException):  # the client gives up and closes its connection
        httpx.post(server.url + "/v1/predict/single", json=long, timeout=1.5,
                   headers={"Authorization": "Bearer other"})
    deadline = time.time() + 5
    while queued_series(server) and time.time() < deadline:
        time.sleep(0.2)
    assert queued_series(server) == 0  # its 8 paths x 500 steps are no longer running


def test_a_sync_request_gives_the_engine_its_timeout_as_a_deadline(tmp_path):
    """Two big exact-mode requests at once under a 20 s timeout: together they need more than
    the time left with the scheduler's margin, so the engine makes the earlier one urgent (it
    can only know that from the deadline the route passes down). Each is answered or gets 504."""
    home = tmp_path / "home"
    tag = import_dev_model(home, "kronos-tiny", seed=9)
    env = {"KRONOS_MODEL": tag, "KRONOS_TIMEOUT_S": "20", "KRONOS_CACHE_MAX_ENTRIES": "0"}
    with running_server(home, env, tmp_path / "server.log") as srv:
        big = [body(500, 120, 8, seed=seed) for seed in (1, 2)]
        assert series_cost(500, 120, 8, 512, True) > 100_000  # seconds of work each, here
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda b: httpx.post(srv.url + "/v1/predict/single", json=b,
                                                         timeout=60), big))
        assert {a.status_code for a in answers} <= {200, 504}, [a.text[:200] for a in answers]
        assert metric_total(srv, "kronos_engine_urgent_steps_total") > 0
