"""The forecast store on a real SQLite file and a real PostgreSQL (temporary cluster)."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import update

from kronos_serving.schemas import SingleRequest
from kronos_serving.settings import Settings
from kronos_serving.store import Forecast, RecordWriter, Store
from kronos_serving.store.database import migrate
from kronos_serving.store.records import input_sha256
from kronos_serving.store.schema import Base, ForecastRecord, Job, utcnow
from local_postgres import postgres_bin, running_postgres

BODY = {"data": [[1.0, 2.0, 0.5, 1.5], [1.5, 2.5, 1.0, 2.0]], "pred_len": 2}


@pytest.fixture(scope="module")
def postgres_url():
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: run `make system-deps`")
    with running_postgres() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        settings = Settings(data_dir=str(tmp_path), job_max_attempts=2)
    else:
        settings = Settings(store_url=request.getfixturevalue("postgres_url"), job_max_attempts=2)
    store = Store(settings)
    assert store.ready(), store.error
    yield store
    with store.engine.begin() as connection:  # the PostgreSQL database is shared by the module
        connection.execute(Job.__table__.delete())
        connection.execute(ForecastRecord.__table__.delete())
    store.engine.dispose()


def test_migrations_match_the_models_and_rerun_safely(store):
    migrate(store.engine)  # a second run (another worker starting) changes nothing
    with ThreadPoolExecutor(4) as pool:  # workers starting together serialise on the lock
        list(pool.map(lambda _: migrate(store.engine), range(4)))
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(
            connection, opts={"version_table": "kronos_alembic_version"}), Base.metadata) == []
    assert store.refresh() and store.state()["status"] == "ok"


def test_idempotency_key_returns_the_same_job_per_owner(store):
    first, created = store.jobs.create_job(BODY, owner="k1", idempotency_key="abc")
    again, created_again = store.jobs.create_job(BODY, owner="k1", idempotency_key="abc")
    other, other_created = store.jobs.create_job(BODY, owner="k2", idempotency_key="abc")
    assert created and not created_again and other_created
    assert again.id == first.id and other.id != first.id
    assert store.jobs.get(first.id, owner="k2") is None and store.jobs.get(first.id, owner="k1")
    assert [job.id for job in store.jobs.list(owner="k1")] == [first.id]


def test_concurrent_claims_never_share_a_job(store):
    ids = {store.jobs.create_job(BODY)[0].id for _ in range(40)}

    def claim_all(worker):
        mine = []
        while claimed := store.jobs.claim(worker, lease_s=30, limit=3):
            assert len(claimed) <= 3  # never more than the worker has room for
            mine += [job.id for job in claimed]
        return mine

    with ThreadPoolExecutor(4) as pool:
        claimed = [job for mine in pool.map(claim_all, ["w1", "w2", "w3", "w4"]) for job in mine]
    assert sorted(claimed) == sorted(ids)
    assert store.jobs.counts() == {"running": 40}


def test_only_the_lease_holder_writes_the_one_result(store):
    job, _ = store.jobs.create_job(BODY)
    [claimed] = store.jobs.claim("w1", lease_s=30)
    assert claimed.id == job.id and claimed.status == "running" and claimed.attempts == 1
    assert not store.jobs.mark_succeeded(job.id, "w2", {"x": 2})
    assert store.jobs.mark_succeeded(job.id, "w1", {"x": 1})
    assert not store.jobs.mark_succeeded(job.id, "w1", {"x": 3})  # finished: written once
    done = store.jobs.get(job.id)
    assert done.status == "succeeded" and done.result == {"x": 1} and done.finished_at


def test_expired_leases_requeue_then_fail_after_max_attempts(store):
    job, _ = store.jobs.create_job(BODY)

    def expire():
        with store.engine.begin() as connection:
            connection.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    store.jobs.claim("dead-1", lease_s=30)
    assert store.jobs.requeue_expired() == (0, 0)  # lease still valid
    expire()
    assert store.jobs.requeue_expired() == (1, 0)
    [again] = store.jobs.claim("w2", lease_s=30)
    assert again.attempts == 2
    assert not store.jobs.mark_succeeded(job.id, "dead-1", {"late": True})
    expire()
    assert store.jobs.requeue_expired() == (0, 1)
    failed = store.jobs.get(job.id)
    assert failed.status == "failed" and "lease expired" in failed.error["error"]


def test_release_retries_then_fails_and_busy_does_not_count(store):
    job, _ = store.jobs.create_job(BODY)
    store.jobs.claim("w", lease_s=30)
    assert store.jobs.release(job.id, "w", {"error": "busy"}, count_attempt=False) == "queued"
    store.jobs.claim("w", lease_s=30)
    assert store.jobs.get(job.id).attempts == 1
    assert store.jobs.release(job.id, "w", {"error": "boom"}) == "queued"
    store.jobs.claim("w", lease_s=30)
    assert store.jobs.release(job.id, "w", {"error": "boom"}) == "failed"
    assert store.jobs.get(job.id).error == {"error": "boom"}


def test_cancel_queued_and_running_and_renew_reports_it(store):
    queued, _ = store.jobs.create_job(BODY)
    assert store.jobs.cancel(queued.id).status == "canceled"
    assert store.jobs.claim("w", lease_s=30) == []
    running, _ = store.jobs.create_job(BODY)
    store.jobs.claim("w", lease_s=30)
    assert store.jobs.renew("w", lease_s=30) == []
    assert store.jobs.cancel(running.id, owner="someone else") is None
    assert store.jobs.cancel(running.id).status == "canceled"
    assert store.jobs.renew("w", lease_s=30) == [running.id]
    assert not store.jobs.mark_succeeded(running.id, "w", {"x": 1})
    assert store.jobs.get(running.id).status == "canceled"


def test_queue_consumer_api_runs_a_job_it_created(store):
    job, _ = store.jobs.create_job(BODY, source="queue", idempotency_key="msg-1")
    assert store.jobs.mark_running(job.id, "consumer", lease_s=30)
    assert not store.jobs.mark_running(job.id, "other", lease_s=30)
    assert store.jobs.mark_failed(job.id, "consumer", {"error": "bad", "field": None})
    assert store.jobs.get(job.id).status == "failed"


def test_records_written_in_batches_and_cleaned_by_retention(store):
    settings = dataclasses.replace(store.settings, retention_days=1)
    writer = RecordWriter(store.records, settings)
    body = SingleRequest(**BODY, seed=5)
    result = {"predictions": [{"close": 1.0}], "model": "m", "model_version": "v", "device": "cpu",
              "seed": 5, "request_id": "r1"}
    writer.submit(Forecast("r1", "/v1/predict/batch", "key", [body, body], [result, result], 200, 3.5))
    writer.submit(Forecast("r2", "/v1/predict/single", "", [body], None, 400, 1.0, error="data: bad"))
    assert writer.flush()
    [first, second] = store.records.by_request("r1")
    assert (first["item"], second["item"]) == (0, 1)
    assert first["predictions"] == {"mean": [{"close": 1.0}], "quantiles": None}
    assert first["input_sha256"] == input_sha256(body) and first["input"] is None
    assert first["parameters"]["pred_len"] == 2 and first["seed"] == 5
    assert store.records.by_request("r1", key_id="other") == []
    [failed] = store.records.by_request("r2")
    assert failed["status"] == 400 and failed["error"] == "data: bad" and failed["predictions"] is None
    with store.engine.begin() as connection:
        connection.execute(update(ForecastRecord).where(ForecastRecord.request_id == "r1")
                           .values(created_at=utcnow() - timedelta(days=2)))
    old, _ = store.jobs.create_job(BODY)
    store.jobs.cancel(old.id)
    with store.engine.begin() as connection:
        connection.execute(update(Job).values(finished_at=utcnow() - timedelta(days=2)))
    kept, _ = store.jobs.create_job(BODY)
    store.settings = settings
    assert store.cleanup() == (2, 1)
    assert store.records.by_request("r1") == [] and len(store.records.by_request("r2")) == 1
    assert store.jobs.get(old.id) is None and store.jobs.get(kept.id).status == "queued"


def test_store_inputs_keeps_the_raw_values(store):
    settings = dataclasses.replace(store.settings, store_inputs=True)
    writer = RecordWriter(store.records, settings)
    writer.submit(Forecast("r3", "/v1/jobs", "", [SingleRequest(**BODY)], None, 503, 1.0))
    assert writer.flush()
    assert store.records.by_request("r3")[0]["input"]["data"] == BODY["data"]


def test_a_store_that_is_down_drops_records_and_reports_it(tmp_path):
    with running_postgres() as server:
        store = Store(Settings(store_url=server.url))
        assert store.ready()
        server.stop()
        writer = RecordWriter(store.records, store.settings)
        writer.submit(Forecast("r4", "/v1/predict/single", "", [SingleRequest(**BODY)], None, 200, 1.0))
        assert writer.flush() and writer.dropped == 1
        store.refresh()
        state = store.state()
        assert state["status"] == "down" and state["error"] and "kronos@" in state["url"]
        store.engine.dispose()
