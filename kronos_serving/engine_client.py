"""The service's side of the engine: one engine thread per model variant, awaited from asyncio.

Every source of work (sync routes, jobs, queue messages, backtests) submits here with a
priority. The queue is bounded (``max_queue`` series waiting for admission: 503 past it). When the
caller stops waiting (504, client gone, cancelled job) its series are cancelled and leave the
engine at its next step; a failing series fails only its own caller.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence

from opentelemetry import context as otel_context

from kronos_runtime import ForecastRequest, ForecastResult
from kronos_runtime.engine import Engine, Priority, StepStats
from kronos_runtime.series import PreparedSeries


class QueueFull(RuntimeError):
    """``max_queue`` series already wait for admission: shed load."""


class EngineClient:
    """Submits validated series to one variant's engine and awaits their forecasts."""

    def __init__(self, engine: Engine, max_queue: int = 1024,
                 on_done: Callable[[object, otel_context.Context], None] | None = None) -> None:
        self.engine, self.max_queue = engine, max_queue
        self.on_done = on_done
        engine.start()

    @property
    def queued(self) -> int:
        return self.engine.queued_series

    async def submit(self, items: Sequence[tuple[ForecastRequest, PreparedSeries]],
                     priority: Priority = Priority.INTERACTIVE,
                     deadline: float | None = None) -> list[ForecastResult]:
        """Queue validated series (all or none) at ``priority`` and wait for their forecasts;
        past ``deadline`` (``time.monotonic()``) they fail with ``TimeoutError``, and the engine
        schedules them to finish before it."""
        if self.engine.waiting + len(items) > self.max_queue:
            raise QueueFull(f"queue holds {self.engine.waiting} series (limit {self.max_queue})")
        trace_context = otel_context.get_current()
        futures = [self.engine.submit(request, prepared, priority, deadline)
                   for request, prepared in items]
        if self.on_done:
            for future in futures:
                future.add_done_callback(lambda f: self.on_done(f, trace_context))
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except BaseException:  # timed out, cancelled or failed: the rest stop costing at once
            for future in futures:
                future.cancel()
            raise


def step_recorder(version: str) -> Callable[[StepStats], None]:
    """Per-step engine metrics for one variant (called from the engine thread)."""
    from .metrics import METRICS

    worst = 0.0

    def record(stats: StepStats) -> None:
        nonlocal worst
        labels = {"model_version": version}
        METRICS.engine_step.labels(**labels).observe(stats.seconds)
        if stats.seconds > worst:
            worst = stats.seconds
            METRICS.worst_step.labels(**labels).set(worst)
        METRICS.live_rows.labels(**labels).observe(stats.live_rows)
        if stats.decoded_series:
            METRICS.batch_size.labels(**labels).observe(stats.decoded_series)
        if stats.admitted:
            METRICS.admissions.labels(**labels).inc(len(stats.admitted))
            for seq in stats.admitted:
                METRICS.queue_wait.labels(**labels).observe(seq.admitted - seq.submitted)
        if stats.urgent:
            METRICS.urgent_steps.labels(**labels).inc()
        if stats.completed:
            METRICS.completions.labels(**labels).inc(len(stats.completed))
            for seq in stats.completed:
                METRICS.inference_duration.labels(**labels).observe(time.monotonic() - seq.admitted)
        METRICS.queued_series.labels(**labels).set(stats.waiting + stats.live_series)
    return record
