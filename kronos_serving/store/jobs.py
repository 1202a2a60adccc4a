"""Forecast jobs in the store: create, claim with a lease, finish once, cancel, list.

The small API other sources of work build on (HTTP jobs, queue messages)::

    store = JobStore(engine, max_attempts=3)
    job, created = store.create_job({"data": rows, "pred_len": 8}, owner=key_id,
                                    idempotency_key="abc", source="queue")
    store.mark_running(job.id, worker="queue-1", lease_s=30)   # or claim(...) queued jobs
    store.mark_succeeded(job.id, "queue-1", result)            # or mark_failed / release

Every state change is one conditional UPDATE, so two workers never both finish a job: a result is
written only by the worker holding the lease of a ``running`` job (one stored result per job).
Claiming uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the transaction holds the
database's write lock (``BEGIN IMMEDIATE``), which makes the same statement atomic.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .schema import FINISHED, Job, utcnow


def iso(moment: Optional[datetime]) -> Optional[str]:
    return moment.isoformat(timespec="milliseconds") + "Z" if moment else None


@dataclass(frozen=True)
class JobRecord:
    """A job as read from the store."""

    id: str
    owner: str
    idempotency_key: Optional[str]
    source: str
    batch: bool
    request: dict[str, Any]
    status: str
    attempts: int
    result: Optional[dict[str, Any]]
    error: Optional[dict[str, Any]]
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]

    @classmethod
    def of(cls, row: Any) -> "JobRecord":
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{job_id}`` answers."""
        return {"job_id": self.id, "status": self.status, "created_at": iso(self.created_at),
                "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
                "attempts": self.attempts, "result": self.result, "error": self.error}


class JobStore:
    """Jobs on one engine; ``max_attempts`` claims before a job that keeps failing ends failed."""

    def __init__(self, engine: Engine, max_attempts: int = 3) -> None:
        self.engine, self.max_attempts = engine, max_attempts

    # -- submit and read ---------------------------------------------------------------------
    def create_job(self, request: dict[str, Any], *, batch: bool = False, owner: str = "",
                   idempotency_key: Optional[str] = None, source: str = "http",
                   job_id: Optional[str] = None, running_under: Optional[str] = None,
                   lease_s: float = 0.0) -> tuple[JobRecord, bool]:
        """A queued job, or the owner's existing job for a repeated ``idempotency_key``
        (``created`` False then; the caller compares ``request`` to refuse a changed body).
        ``running_under`` creates it running under that worker's lease instead (a queue consumer
        runs it at once: no job runner may claim it in between)."""
        now = utcnow()
        values = {"id": job_id or uuid.uuid4().hex, "owner": owner, "source": source,
                  "idempotency_key": idempotency_key, "batch": batch, "request": request,
                  "status": "queued", "attempts": 0, "created_at": now}
        if running_under:
            values.update(status="running", attempts=1, started_at=now, lease_owner=running_under,
                          lease_expires_at=now + timedelta(seconds=lease_s))
        try:
            with self.engine.begin() as connection:
                connection.execute(Job.__table__.insert().values(**values))
        except IntegrityError:
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is None:  # a job id collision, not a repeated key
                raise
            return existing, False
        return self.get(values["id"]), True

    def _by_idempotency_key(self, owner: str, key: Optional[str]) -> Optional[JobRecord]:
        if key is None:
            return None
        with self.engine.begin() as connection:
            row = connection.execute(select(Job).where(Job.owner == owner,
                                                       Job.idempotency_key == key)).first()
        return JobRecord.of(row) if row else None

    def get(self, job_id: str, owner: Optional[str] = None) -> Optional[JobRecord]:
        """The job, or None (also when ``owner`` is given and the job is someone else's)."""
        query = select(Job).where(Job.id == job_id)
        if owner is not None:
            query = query.where(Job.owner == owner)
        with self.engine.begin() as connection:
            row = connection.execute(query).first()
        return JobRecord.of(row) if row else None

    def list(self, owner: Optional[str] = None, status: Optional[str] = None,
             limit: int = 50) -> list[JobRecord]:
        """Newest first."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if owner is not None:
            query = query.where(Job.owner == owner)
        if status:
            query = query.where(Job.status == status)
        with self.engine.begin() as connection:
            return [JobRecord.of(row) for row in connection.execute(query)]

    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self.engine.begin() as connection:
            rows = connection.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: count for status, count in rows}

    # -- execution ---------------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float, limit: int = 1) -> list[JobRecord]:
        """Up to ``limit`` queued jobs (oldest first), now running under ``worker``'s lease."""
        now = utcnow()
        # a CTE, evaluated once: PostgreSQL may re-run an IN (... LIMIT n) subquery inside an
        # UPDATE and claim more than ``limit`` jobs (a job canceled while queued was claimed)
        oldest = (select(Job.id).where(Job.status == "queued").order_by(Job.created_at)
                  .limit(limit).with_for_update(skip_locked=True).cte("oldest"))
        claim = (update(Job).where(Job.id == oldest.c.id, Job.status == "queued")
                 .values(status="running", lease_owner=worker,
                         lease_expires_at=now + timedelta(seconds=lease_s),
                         attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))
                 .returning(*Job.__table__.columns))
        with self.engine.begin() as connection:
            rows = connection.execute(claim).all()
        return sorted((JobRecord.of(row) for row in rows), key=lambda job: job.created_at)

    def mark_running(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Take one queued job (e.g. one just created by a queue consumer) under a lease."""
        now = utcnow()
        return self._change(job_id, ("queued",), None, status="running", lease_owner=worker,
                            lease_expires_at=now + timedelta(seconds=lease_s),
                            attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))

    def renew(self, worker: str, lease_s: float) -> list[str]:
        """Extend every lease ``worker`` holds; returns its jobs canceled meanwhile (to stop)."""
        with self.engine.begin() as connection:
            connection.execute(update(Job).where(Job.lease_owner == worker, Job.status == "running")
                               .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s)))
            canceled = connection.execute(select(Job.id).where(Job.lease_owner == worker,
                                                               Job.status == "canceled"))
            return list(canceled.scalars())

    def mark_succeeded(self, job_id: str, worker: str, result: dict[str, Any]) -> bool:
        """Store the result; False when ``worker`` no longer holds the job (nothing written)."""
        return self._change(job_id, ("running",), worker, status="succeeded", result=result,
                            error=None, finished_at=utcnow(), lease_owner=None,
                            lease_expires_at=None)

    def mark_failed(self, job_id: str, worker: str, error: dict[str, Any]) -> bool:
        """End the job ``failed`` with ``error`` (``{"error", "field", "status"}``)."""
        return self._change(job_id, ("running",), worker, status="failed", error=error,
                            finished_at=utcnow(), lease_owner=None, lease_expires_at=None)

    def release(self, job_id: str, worker: str, error: dict[str, Any],
                count_attempt: bool = True) -> str:
        """After a failed try: queued again, or ``failed`` once its attempts are used up.
        ``count_attempt=False`` (the service was busy) gives the attempt back. Returns the status."""
        with self.engine.begin() as connection:
            attempts = connection.execute(select(Job.attempts).where(Job.id == job_id)).scalar()
        if attempts is None:
            return "missing"
        if count_attempt and attempts >= self.max_attempts:
            return "failed" if self.mark_failed(job_id, worker, error) else "lost"
        changed = self._change(job_id, ("running",), worker, status="queued", error=error,
                               lease_owner=None, lease_expires_at=None,
                               attempts=Job.attempts - (0 if count_attempt else 1))
        return "queued" if changed else "lost"

    def cancel(self, job_id: str, owner: Optional[str] = None) -> Optional[JobRecord]:
        """Cancel a queued or running job (its worker stops it at its next lease renewal or at
        once when it is this process); finished jobs stay as they are. None if unknown."""
        query = update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
        if owner is not None:
            query = query.where(Job.owner == owner)
        with self.engine.begin() as connection:
            connection.execute(query.values(status="canceled", finished_at=utcnow()))
        return self.get(job_id, owner)

    def requeue_expired(self) -> tuple[int, int]:
        """Jobs whose lease ran out (their worker died): queued again, or failed when their
        attempts are used up. Returns (requeued, failed)."""
        now = utcnow()
        expired = (Job.status == "running", Job.lease_expires_at < now)
        error = {"error": f"worker lost (lease expired) {self.max_attempts} times", "field": None,
                 "status": 500}
        with self.engine.begin() as connection:
            failed = connection.execute(
                update(Job).where(*expired, Job.attempts >= self.max_attempts)
                .values(status="failed", error=error, finished_at=now, lease_owner=None,
                        lease_expires_at=None)).rowcount
            requeued = connection.execute(
                update(Job).where(*expired).values(status="queued", lease_owner=None,
                                                   lease_expires_at=None)).rowcount
        return requeued, failed

    def release_all(self, worker: str) -> int:
        """On shutdown: this worker's running jobs go back to the queue (attempt given back)."""
        with self.engine.begin() as connection:
            return connection.execute(
                update(Job).where(Job.lease_owner == worker, Job.status == "running")
                .values(status="queued", lease_owner=None, lease_expires_at=None,
                        attempts=Job.attempts - 1)).rowcount

    def delete_finished_before(self, cutoff: datetime) -> int:
        """Retention: finished jobs older than ``cutoff`` are removed."""
        with self.engine.begin() as connection:
            return connection.execute(delete(Job).where(Job.status.in_(FINISHED),
                                                        Job.finished_at < cutoff)).rowcount

    def _change(self, job_id: str, from_status: tuple[str, ...], worker: Optional[str],
                **values: Any) -> bool:
        query = update(Job).where(Job.id == job_id, Job.status.in_(from_status))
        if worker is not None:
            query = query.where(Job.lease_owner == worker)
        with self.engine.begin() as connection:
            return connection.execute(query.values(**values)).rowcount == 1
