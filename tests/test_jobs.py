"""Forecast jobs and forecast records against real servers, on SQLite and a real PostgreSQL."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import make_candles
from kronos_serving.schemas import SingleRequest
from kronos_serving.store.records import input_sha256
from local_postgres import running_postgres
from local_server import import_dev_model, running_server

ONE = {"Authorization": "Bearer key-one"}
TWO = {"Authorization": "Bearer key-two"}
FINISHED = ("succeeded", "failed", "canceled")


def series(rows: int, data_seed: int, **extra) -> dict:
    frame, stamps = make_candles(rows, seed=data_seed)
    return {"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps], **extra}


GOOD = series(24, 1, pred_len=3, seed=11)


@pytest.fixture(scope="module")
def model_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    return home, import_dev_model(home, "kronos-tiny", seed=1)


@pytest.fixture(scope="module")
def server(model_home, tmp_path_factory):
    home, tag = model_home
    env = {"KRONOS_MODEL": tag, "KRONOS_API_KEYS": "key-one,key-two", "KRONOS_MAX_PRED_LEN": "200",
           "KRONOS_MAX_BATCH_ITEMS": "5", "KRONOS_JOB_CONCURRENCY": "16", "KRONOS_JOB_LEASE_S": "6",
           "KRONOS_WORKERS": "2",  # two workers share the SQLite store: claims, cross-worker cancel
           "KRONOS_DATA_DIR": str(tmp_path_factory.mktemp("data"))}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def submit(server, body, headers=ONE, **kwargs) -> httpx.Response:
    return httpx.post(server.url + "/v1/jobs", json=body, headers=headers, timeout=30, **kwargs)


def wait_job(server, job_id, headers=ONE, until=FINISHED, timeout=60.0) -> dict:
    deadline = time.time() + timeout
    while True:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        if job["status"] in until or time.time() > deadline:
            return job
        time.sleep(0.1)


def wait_records(server, request_id, count=1, headers=ONE, timeout=10.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        response = httpx.get(f"{server.url}/v1/forecasts/{request_id}", headers=headers, timeout=30)
        if response.status_code == 200 and len(response.json()["forecasts"]) >= count:
            return response.json()["forecasts"]
        if time.time() > deadline:
            raise AssertionError(f"no records for {request_id}: {response.text}")
        time.sleep(0.1)


def without_request_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def test_job_results_equal_the_sync_results_for_the_same_body_and_seed(server):
    single = series(40, 2, pred_len=5, seed=7, sample_count=4, quantiles=[0.1, 0.9])
    created = submit(server, single)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    assert created.headers["location"] == created.json()["status_url"]
    job = wait_job(server, created.json()["job_id"])
    assert job["status"] == "succeeded" and job["error"] is None and job["attempts"] == 1
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    sync = httpx.post(server.url + "/v1/predict/single", json=single, headers=ONE, timeout=60).json()
    assert without_request_id(job["result"]) == without_request_id(sync)
    assert job["result"]["request_id"] == job["job_id"]

    batch = {"batch": [single, series(30, 3, pred_len=2, seed=8)]}
    job = wait_job(server, submit(server, batch).json()["job_id"])
    sync = httpx.post(server.url + "/v1/predict/batch", json=batch, headers=ONE, timeout=60).json()
    assert set(job["result"]) == {"results"}
    assert [without_request_id(r) for r in job["result"]["results"]] == \
        [without_request_id(r) for r in sync["results"]]


@pytest.mark.parametrize("body", [
    {**GOOD, "pred_len": 201}, {**GOOD, "timestamps": ["2024-01-01"] * 24},
    {**GOOD, "data": [[1, "x", 2, 3]] * 2, "timestamps": None}, {**GOOD, "colour": "red"},
    {**GOOD, "quantiles": [1.5]}, {"batch": [GOOD, {**GOOD, "pred_len": 201}]},
    {"batch": [GOOD] * 6}, {"batch": [GOOD, {"data": [[1, 2, 3]] * 2}]}, {"batch": []},
], ids=lambda body: "x")
def test_submit_rejects_what_the_sync_routes_reject_with_the_same_400(server, body):
    route = "/v1/predict/batch" if "batch" in body else "/v1/predict/single"
    sync = httpx.post(server.url + route, json=body, headers=ONE, timeout=30)
    job = submit(server, body)
    assert sync.status_code == job.status_code == 400, (sync.text, job.text)
    assert job.json()["field"] == sync.json()["field"]
    assert job.json()["error"] == sync.json()["error"]


def test_submit_rejects_bad_json_other_types_and_missing_keys(server):
    malformed = httpx.post(server.url + "/v1/jobs", content=b"{nope", headers=ONE)
    assert malformed.status_code == 400 and malformed.json()["field"] == "body"
    typed = httpx.post(server.url + "/v1/jobs", content=b"x", timeout=30,
                       headers={**ONE, "Content-Type": "text/plain"})
    assert typed.status_code == 415
    assert submit(server, GOOD, headers={}).status_code == 401
    assert httpx.get(server.url + "/v1/jobs/nope", headers=ONE).status_code == 404
    listed = httpx.get(server.url + "/v1/jobs?status=lost", headers=ONE)
    assert listed.status_code == 400 and listed.json()["field"] == "status"


def test_idempotency_key_returns_the_existing_job(server):
    key = {**ONE, "Idempotency-Key": "order-42"}
    first = submit(server, GOOD, headers=key)
    again = submit(server, GOOD, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    changed = submit(server, {**GOOD, "pred_len": 4}, headers=key)
    assert changed.status_code == 409 and changed.json()["field"] == "Idempotency-Key"
    other = submit(server, GOOD, headers={**TWO, "Idempotency-Key": "order-42"})
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]


def test_a_key_sees_only_its_own_jobs_and_records(server):
    job_id = submit(server, GOOD).json()["job_id"]
    assert wait_job(server, job_id)["status"] == "succeeded"
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=TWO).status_code == 404
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=TWO).status_code == 404
    assert job_id not in {j["job_id"] for j in httpx.get(server.url + "/v1/jobs", headers=TWO).json()["jobs"]}
    assert job_id in {j["job_id"] for j in httpx.get(server.url + "/v1/jobs?status=succeeded&limit=1000",
                                                     headers=ONE).json()["jobs"]}
    assert wait_records(server, job_id)[0]["route"] == "/v1/jobs"
    assert httpx.get(f"{server.url}/v1/forecasts/{job_id}", headers=TWO).status_code == 404


def test_cancel_a_running_job(server):
    slow = series(400, 4, pred_len=200, sample_count=32)  # its window slides: many seconds of engine work
    job_id = submit(server, slow).json()["job_id"]
    assert wait_job(server, job_id, until=("running",) + FINISHED)["status"] == "running"
    canceled = httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=ONE)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    [record] = wait_records(server, job_id)  # the run stopped before it finished
    assert record["status"] == 499 and record["predictions"] is None
    job = wait_job(server, job_id)
    assert job["status"] == "canceled" and job["result"] is None
    assert httpx.delete(f"{server.url}/v1/jobs/{job_id}", headers=ONE).status_code == 200
    done = submit(server, GOOD).json()["job_id"]
    wait_job(server, done)
    assert httpx.delete(f"{server.url}/v1/jobs/{done}", headers=ONE).status_code == 409


def test_records_equal_the_responses_they_describe(server):
    body = series(30, 5, pred_len=4, seed=3, sample_count=3, quantiles=[0.25, 0.75])
    response = httpx.post(server.url + "/v1/predict/single", json=body, timeout=60,
                          headers={**ONE, "X-Request-ID": "audit-1"}).json()
    [record] = wait_records(server, "audit-1")
    assert record["predictions"] == {"mean": response["predictions"], "quantiles": response["quantiles"]}
    for name in ("model", "model_version", "device", "seed"):
        assert record[name] == response[name]
    assert record["route"] == "/v1/predict/single" and record["status"] == 200
    assert record["key_id"] and "key-one" not in str(record)
    assert record["input_sha256"] == input_sha256(SingleRequest(**body)) and record["input"] is None
    assert record["input_summary"] == {"rows": 30, "values_per_row": 5,
                                       "time_range": [body["timestamps"][0], body["timestamps"][-1]]}
    assert record["parameters"]["sample_count"] == 3 and record["parameters"]["pred_len"] == 4
    assert record["parameters"]["quantiles"] == [0.25, 0.75] and record["latency_ms"] > 0

    batch = {"batch": [GOOD, series(20, 6, pred_len=2)]}
    answered = httpx.post(server.url + "/v1/predict/batch", json=batch, timeout=60,
                          headers={**ONE, "X-Request-ID": "audit-2"}).json()["results"]
    records = wait_records(server, "audit-2", count=2)
    assert [r["item"] for r in records] == [0, 1]
    assert [r["predictions"]["mean"] for r in records] == [a["predictions"] for a in answered]
    assert [r["seed"] for r in records] == [a["seed"] for a in answered]

    httpx.post(server.url + "/v1/predict/single", json={**GOOD, "pred_len": 201}, timeout=30,
               headers={**ONE, "X-Request-ID": "audit-3"})
    [rejected] = wait_records(server, "audit-3")
    assert rejected["status"] == 400 and rejected["error"].startswith("pred_len")


def test_500_jobs_submitted_at_once_drain(server):
    bodies = [series(16, 100 + i, pred_len=1, seed=i) for i in range(500)]
    with httpx.Client(headers=ONE, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda body: client.post(server.url + "/v1/jobs", json=body), bodies))
        assert [a.status_code for a in answers] == [202] * 500
        ids = {a.json()["job_id"] for a in answers}
        deadline = time.time() + 150
        while time.time() < deadline:
            done = {j["job_id"] for j in client.get(server.url + "/v1/jobs?status=succeeded&limit=1000")
                    .json()["jobs"]}
            if ids <= done:
                break
            time.sleep(1)
    assert ids <= done, f"{len(ids - done)} of 500 jobs not succeeded"


def test_metrics_and_readiness_report_jobs_and_the_store(server):
    ready = httpx.get(server.url + "/v1/readyz").json()
    assert ready["store"]["status"] == "ok" and ready["store"]["backend"] == "sqlite"
    time.sleep(2.5)  # job counts are published every 2 s
    text = httpx.get(server.url + "/v1/metrics").text
    assert float(re.search(r'^kronos_jobs\{status="succeeded"\} ([0-9.e+]+)$', text, re.M)[1]) > 0
    assert re.search(r'^kronos_job_duration_seconds_count\{status="succeeded"\} [1-9]', text, re.M)
    assert re.search(r'^kronos_store_write_seconds_count\{operation="record"\} [1-9]', text, re.M)


# -- crashes, restarts and a store that goes down ---------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request, tmp_path):
    if request.param == "sqlite":
        yield {"KRONOS_DATA_DIR": str(tmp_path / "data")}
        return
    with running_postgres() as postgres:
        yield {"KRONOS_STORE_URL": postgres.url, "postgres": postgres}


def test_jobs_survive_kill_9_and_restart_and_a_store_outage_spares_sync(model_home, store_env, tmp_path):
    home, tag = model_home
    postgres = store_env.pop("postgres", None)
    env = {"KRONOS_MODEL": tag, "KRONOS_JOB_CONCURRENCY": "2", "KRONOS_JOB_LEASE_S": "2",
           "KRONOS_MAX_PRED_LEN": "100", **store_env}
    bodies = [series(48, 200 + i, pred_len=100, seed=i) for i in range(16)]
    with running_server(home, env, tmp_path / "first.log") as first:
        ids = [httpx.post(first.url + "/v1/jobs", json=b, timeout=30).json()["job_id"] for b in bodies]
        queued = httpx.post(first.url + "/v1/jobs", json=GOOD, timeout=30).json()["job_id"]
        assert httpx.delete(f"{first.url}/v1/jobs/{queued}", timeout=30).json()["status"] == "canceled"
        deadline = time.time() + 90
        while time.time() < deadline:
            states = httpx.get(first.url + "/v1/jobs?limit=100", timeout=30).json()["jobs"]
            if sum(s["status"] == "succeeded" for s in states) >= 2:
                break
            time.sleep(0.1)
        before = {s["job_id"]: httpx.get(f"{first.url}/v1/jobs/{s['job_id']}", timeout=30).json()
                  for s in states if s["status"] == "succeeded"}
        workers = first.worker_pids()
        assert workers
        first.kill()  # kill -9 the worker (and the arbiter, so it does not start another)
        assert not any(Path(f"/proc/{pid}").exists() and "Z" not in
                       Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                       for pid in workers)
    assert len(before) >= 2 and len(before) < len(ids)

    with running_server(home, env, tmp_path / "second.log") as second:
        after = {i: wait_job(second, i, headers={}, timeout=120) for i in ids}
        assert {i: s["status"] for i, s in after.items()} == {i: "succeeded" for i in ids}
        for job_id, old in before.items():  # finished before the crash: readable, unchanged
            assert after[job_id]["result"] == old["result"]
            assert after[job_id]["finished_at"] == old["finished_at"]
        assert all(s["attempts"] <= 2 for s in after.values())
        assert any(s["attempts"] == 2 for s in after.values())  # killed mid-job, run again
        canceled = httpx.get(f"{second.url}/v1/jobs/{queued}", timeout=30).json()
        assert canceled["status"] == "canceled" and canceled["attempts"] == 0

        if postgres is None:
            return
        postgres.stop()  # the store goes down: sync still served, jobs 503
        deadline = time.time() + 10
        while httpx.get(second.url + "/v1/readyz").json()["store"]["status"] != "down":
            assert time.time() < deadline, "readyz never reported the store down"
            time.sleep(0.2)
        sync = httpx.post(second.url + "/v1/predict/single", json=GOOD, timeout=60)
        assert sync.status_code == 200, sync.text
        for response in (httpx.post(second.url + "/v1/jobs", json=GOOD, timeout=30),
                         httpx.get(f"{second.url}/v1/jobs/{ids[0]}", timeout=30)):
            assert response.status_code == 503 and response.headers["retry-after"]
        deadline = time.time() + 10
        while "records_dropped" not in second.log():
            assert time.time() < deadline, "no log line for dropped records"
            time.sleep(0.2)
        dropped = re.search(r'^kronos_store_records_dropped_total\{reason="store_error"\} ([0-9.]+)',
                            httpx.get(second.url + "/v1/metrics").text, re.M)
        assert dropped and float(dropped[1]) >= 1
