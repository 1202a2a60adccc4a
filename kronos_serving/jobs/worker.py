"""The job runner in every worker: claims queued jobs under a lease, runs them, stores results.

Jobs go through the shared forecast path (:meth:`ForecastRunner.run`) at background priority,
so sync traffic goes first. The loop renews this worker's leases every third of ``job_lease_s``
(and stops jobs canceled meanwhile, by any worker of any replica), re-queues jobs whose lease
expired (their worker died), refreshes the store's health for ``/v1/readyz``, publishes job
counts and runs retention cleanup hourly. Nothing here raises out of the loop: store errors are
counted, logged and retried.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any, Callable, TypeVar

from kronos_runtime.engine import Priority

from ..forecasting import ForecastRunner, RequestFailed
from ..metrics import METRICS
from ..schemas import BatchRequest, SingleRequest
from ..settings import Settings
from ..store import JobRecord, Store
from ..store.errors import describe
from ..store.schema import JOB_STATUSES, utcnow

log = logging.getLogger("kronos.jobs")
JOB_ROUTE = "/v1/jobs"
HEALTH_EVERY_S = 2.0
CLEANUP_EVERY_S = 3600.0
T = TypeVar("T")


async def store_call(operation: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking store call in a thread, timed (``kronos_store_write_seconds``) and counted on
    failure (``kronos_store_errors_total``)."""
    started = time.perf_counter()
    try:
        result = await asyncio.to_thread(function, *args, **kwargs)
    except Exception:
        METRICS.store_errors.labels(operation=operation).inc()
        raise
    METRICS.store_write.labels(operation=operation).observe(time.perf_counter() - started)
    return result


def job_bodies(job: JobRecord) -> list[SingleRequest]:
    """The validated bodies of a job's stored request."""
    if job.batch:
        return BatchRequest.model_validate(job.request).batch
    return [SingleRequest.model_validate(job.request)]


def job_error(status: int, error: str, field: str | None = None) -> dict[str, Any]:
    return {"error": error, "field": field, "status": status}


class JobWorker:
    """Runs up to ``job_concurrency`` jobs at once in this worker's event loop."""

    def __init__(self, store: Store, runner: ForecastRunner, settings: Settings,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.store, self.runner, self.settings = store, runner, settings
        self.paused = paused  # e.g. draining: claim nothing new
        self.stopping = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, asyncio.Task] = {}
        self.loop_task: asyncio.Task | None = None
        self.wake_event: asyncio.Event | None = None
        self.due = {"renew": 0.0, "health": 0.0, "cleanup": 0.0}

    def start(self) -> None:
        """Start the loop on the running event loop (the service's start-up hook)."""
        self.wake_event = asyncio.Event()
        self.loop_task = asyncio.create_task(self._loop(), name="kronos-jobs")

    def wake(self) -> None:
        """Look for queued jobs now (a job was just submitted here or one finished)."""
        if self.wake_event is not None:
            self.wake_event.set()

    def cancel_local(self, job_id: str) -> None:
        """Stop a job this worker is running (it was canceled)."""
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Stop the loop and the running jobs; their jobs go back to the queue at once."""
        self.stopping = True
        if self.loop_task is not None:
            self.loop_task.cancel()
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)
        if self.running or self.store.migrated:
            try:
                await store_call("release", self.store.jobs.release_all, self.worker_id)
            except Exception as exc:  # the leases expire instead
                log.warning("could not release jobs", extra={"event": "jobs_release_failed",
                                                             "error": describe(exc)})

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # store down: retried next time, never fatal
                self.store.up = False
                self.store.error = describe(exc)
                log.warning("job loop error", extra={"event": "jobs_loop_error",
                                                     "error": self.store.error})
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(self.wake_event.wait(), self.settings.job_poll_s)
            except TimeoutError:
                pass
            self.wake_event.clear()

    async def _tick(self) -> None:
        now = time.monotonic()
        if now >= self.due["health"]:
            self.due["health"] = now + HEALTH_EVERY_S
            if not await asyncio.to_thread(self.store.refresh):
                return
            await self._housekeeping()
        if not self.store.up:
            return
        if now >= self.due["renew"]:
            self.due["renew"] = now + self.settings.job_lease_s / 3
            canceled = await store_call("renew", self.store.jobs.renew, self.worker_id,
                                        self.settings.job_lease_s)
            for job_id in canceled:
                self.cancel_local(job_id)
        free = self.settings.job_concurrency - len(self.running)
        if (not self.settings.jobs_enabled or not self.runner.variants or free <= 0
                or self.paused()):
            return
        claimed = await store_call("claim", self.store.jobs.claim, self.worker_id,
                                   self.settings.job_lease_s, free)
        for job in claimed:
            self.running[job.id] = asyncio.create_task(self._run(job), name=f"kronos-job-{job.id}")
        if len(claimed) == free:  # there may be more: look again at once
            self.wake()

    async def _housekeeping(self) -> None:
        """Expired leases, job counts and (hourly) retention."""
        requeued, failed = await store_call("requeue", self.store.jobs.requeue_expired)
        if requeued or failed:
            log.warning("expired job leases", extra={"event": "jobs_lease_expired",
                                                     "requeued": requeued, "failed": failed})
        counts = await store_call("count", self.store.jobs.counts)
        for status in JOB_STATUSES:
            METRICS.jobs.labels(status=status).set(counts.get(status, 0))
        if time.monotonic() >= self.due["cleanup"]:
            self.due["cleanup"] = time.monotonic() + CLEANUP_EVERY_S
            records, jobs = await store_call("cleanup", self.store.cleanup)
            if records or jobs:
                log.info("retention cleanup", extra={"event": "retention_cleanup",
                                                     "records": records, "jobs": jobs})

    async def _run(self, job: JobRecord) -> None:
        """One try of one job; its outcome is stored only while this worker holds the lease."""
        outcome = "lost"
        try:
            results = await self.runner.run(job_bodies(job), job.id, index_errors=job.batch,
                                            priority=Priority.BACKGROUND, route=JOB_ROUTE,
                                            key_id=job.owner)
            result = {"results": results} if job.batch else results[0]
            if await store_call("finish", self.store.jobs.mark_succeeded, job.id, self.worker_id,
                                result):
                outcome = "succeeded"
        except asyncio.CancelledError:
            outcome = "released" if self.stopping else "canceled"  # shutdown, or DELETE
        except RequestFailed as exc:
            error = job_error(exc.status, exc.error, exc.field)
            if exc.status == 503:  # busy or loading: try again later, the attempt is given back
                await asyncio.sleep(exc.retry_after or 1)
                outcome = await store_call("release", self.store.jobs.release, job.id,
                                           self.worker_id, error, count_attempt=False)
            elif await store_call("finish", self.store.jobs.mark_failed, job.id, self.worker_id,
                                  error):
                outcome = "failed"
        except Exception as exc:  # the runtime or the store failed on this try
            log.exception("job failed", extra={"event": "job_failed", "job_id": job.id,
                                               "attempt": job.attempts})
            try:
                outcome = await store_call("release", self.store.jobs.release, job.id,
                                           self.worker_id,
                                           job_error(500, f"forecast failed: {describe(exc)}"))
            except Exception:  # store down: the lease expires and the job runs again
                pass
        finally:
            self.running.pop(job.id, None)
            self.wake()
        if outcome in ("succeeded", "failed", "canceled"):
            METRICS.job_latency.labels(status=outcome).observe(
                (utcnow() - job.created_at).total_seconds())
        log.info("job", extra={"event": "job", "job_id": job.id, "outcome": outcome,
                               "attempt": job.attempts,
                               "series": len(job.request["batch"]) if job.batch else 1})
