"""Adaptive batching: concurrent requests for one model run as one ragged runtime call.

Jobs queue up while the runtime is busy; when it is free, the batcher takes as many queued
series as the limits allow and runs them together in a worker thread. It waits ``max_wait_s``
for more only when the queue is short and the last batch held several series (traffic is
concurrent); a lone client never waits. A failing batch fails only its own jobs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from opentelemetry import context as otel_context

from kronos_runtime import ForecastRequest, ForecastResult, KronosForecaster
from kronos_runtime.engine import Priority
from kronos_runtime.series import PreparedSeries

log = logging.getLogger("kronos.batcher")


class QueueFull(RuntimeError):
    """The batcher holds ``max_queue`` series already: shed load."""


@dataclass
class Job:
    request: ForecastRequest
    prepared: PreparedSeries
    future: asyncio.Future
    priority: Priority = Priority.INTERACTIVE
    queued_ns: int = field(default_factory=time.time_ns)
    trace_context: otel_context.Context = field(default_factory=otel_context.get_current)

    @property
    def rows(self) -> int:
        return self.request.sampling.sample_count


@dataclass
class BatchStats:
    """What one runtime call did, for metrics and logs."""

    series: int
    rows: int
    seconds: float
    started_ns: int
    ended_ns: int
    jobs: list[Job]
    failed: bool

    @property
    def queue_waits(self) -> list[float]:
        return [(self.started_ns - job.queued_ns) / 1e9 for job in self.jobs]


class Batcher:
    """Batches jobs for one forecaster; one runtime call at a time."""

    def __init__(self, forecaster: KronosForecaster, max_series: int = 64, max_rows: int = 256,
                 max_wait_s: float = 0.005, max_queue: int = 1024,
                 on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self.forecaster = forecaster
        self.max_series, self.max_rows = max_series, max_rows
        self.max_wait_s, self.max_queue = max_wait_s, max_queue
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.in_flight = 0
        self.last_batch_series = 0
        # Always the same thread: one OpenMP thread team, no idle teams spinning on the cores.
        self._runtime_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kronos-runtime")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, items: Sequence[tuple[ForecastRequest, PreparedSeries]],
                     priority: Priority = Priority.INTERACTIVE) -> list[ForecastResult]:
        """Queue validated series (all or none) and wait for their forecasts.

        Background work queues behind every interactive series already queued."""
        self._ensure_worker()
        if len(self._queue) + len(items) > self.max_queue:
            raise QueueFull(f"queue holds {len(self._queue)} series (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        jobs = [Job(request, prepared, loop.create_future(), priority=priority)
                for request, prepared in items]
        if priority == Priority.INTERACTIVE:  # ahead of queued background work
            at = next((i for i, j in enumerate(self._queue) if j.priority != Priority.INTERACTIVE),
                      len(self._queue))
            for offset, job in enumerate(jobs):
                self._queue.insert(at + offset, job)
        else:
            self._queue.extend(jobs)
        self._wakeup.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    def _take(self) -> list[Job]:
        batch, rows = [], 0
        while self._queue and len(batch) < self.max_series:
            job = self._queue[0]
            if batch and rows + job.rows > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += job.rows
        return [job for job in batch if not job.future.done()]  # skip cancelled callers

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if (self.max_wait_s > 0 and self.last_batch_series > 1
                        and len(self._queue) < self.max_series):
                    await asyncio.sleep(self.max_wait_s)
                batch = self._take()
                self.last_batch_series = len(batch)
                if batch:
                    try:
                        await self._run_batch(batch)
                    except Exception:  # never let the loop die: later batches must still run
                        log.exception("batch bookkeeping failed", extra={"event": "batcher_error"})

    async def _run_batch(self, batch: list[Job]) -> None:
        started, started_ns = time.perf_counter(), time.time_ns()
        self.in_flight += len(batch)
        failed = False
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._runtime_thread, self.forecaster.forecast_prepared,
                [j.prepared for j in batch], [j.request for j in batch])
        except Exception as exc:  # one failing batch must not take the worker down
            failed = True
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)
        finally:
            self.in_flight -= len(batch)
        if self.on_batch:
            self.on_batch(BatchStats(series=len(batch), rows=sum(j.rows for j in batch),
                                     seconds=time.perf_counter() - started, started_ns=started_ns,
                                     ended_ns=time.time_ns(), jobs=batch, failed=failed))
