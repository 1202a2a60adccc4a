"""Queue messages recorded as jobs in the store, so they can be polled at ``/v1/jobs/{job_id}``.

A message with a ``job_id`` header (or every message with ``amqp_record_jobs``) becomes a job of
source ``queue`` with that id, created running under this worker's job lease (the job runner
renews it; if the worker dies, the lease expires and the job runs again like any other). A
redelivered message finds its job: already succeeded, it is answered from the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..jobs.worker import JobWorker, job_error, store_call
from ..schemas import SingleRequest
from ..store import Store

MAX_JOB_ID = 64  # the store's job id column


@dataclass
class QueueJob:
    """A message's job: ``held`` when this worker runs it and stores its outcome; ``result``
    when it had already succeeded (a redelivery)."""

    id: str
    held: bool
    result: dict[str, Any] | None = None


def stored_request(bodies: list[SingleRequest], batch: bool) -> dict[str, Any]:
    """The request as the job API stores it (the fields the caller set)."""
    dumped = [body.model_dump(mode="json", exclude_unset=True) for body in bodies]
    return {"batch": dumped} if batch else dumped[0]


class StoreJobRecorder:
    """Creates, takes and finishes queue jobs in the store, under the job runner's lease."""

    def __init__(self, store: Store, worker: JobWorker, lease_s: float) -> None:
        self.store, self.worker, self.lease_s = store, worker, lease_s

    async def begin(self, job_id: str | None, dedupe_key: str | None,
                    bodies: list[SingleRequest], batch: bool) -> QueueJob:
        """The message's job, created if new (``dedupe_key`` finds it again on redelivery)."""
        job, created = await store_call(
            "submit", self.store.jobs.create_job, stored_request(bodies, batch), batch=batch,
            source="queue", job_id=job_id, idempotency_key=dedupe_key and f"amqp:{dedupe_key}",
            running_under=self.worker.worker_id, lease_s=self.lease_s)
        if created:
            return QueueJob(job.id, held=True)
        if job.status == "succeeded":  # a redelivered message whose job is done: no forecast
            return QueueJob(job.id, held=False, result=job.result)
        held = job.status == "queued" and await store_call(
            "claim", self.store.jobs.mark_running, job.id, self.worker.worker_id, self.lease_s)
        return QueueJob(job.id, held=bool(held))

    async def release(self, job: QueueJob, status: int, body: dict[str, Any]) -> None:
        """The message is retried later: its job goes back to ``queued`` (the attempt given back),
        so the retry (or a job runner, if it comes first) can take it."""
        if job.held:
            await store_call("release", self.store.jobs.release, job.id, self.worker.worker_id,
                             job_error(status, str(body.get("error")), body.get("field")),
                             count_attempt=False)

    async def finish(self, job: QueueJob, status: int, body: dict[str, Any]) -> None:
        """Store the reply: the result, or the error (the job ends ``failed``)."""
        if not job.held:
            return
        if status == 200:
            await store_call("finish", self.store.jobs.mark_succeeded, job.id,
                             self.worker.worker_id, body)
        else:
            await store_call("finish", self.store.jobs.mark_failed, job.id, self.worker.worker_id,
                             job_error(status, str(body.get("error")), body.get("field")))
