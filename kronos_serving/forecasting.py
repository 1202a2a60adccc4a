"""From validated request bodies to response bodies: the path every source of work shares.

The sync routes, jobs, queue messages and backtests all call :meth:`ForecastRunner.run`: it
picks each body's model variant, validates it (400 naming the field), submits the series to the
variants at the caller's priority and turns the results into the sync response's JSON.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Optional

from kronos_runtime import InputError
from kronos_runtime.engine import Priority, series_cost

from .engine_client import QueueFull
from .metrics import METRICS
from .rate_limits import make_limiter
from .requests import to_forecast_request, to_response
from .routing import choose
from .schemas import SingleRequest
from .settings import Settings
from .store.records import Forecast
from .tracing import tracer
from .variants import Variant

OFF_LOOP_ROWS = 4096  # requests with more input rows are prepared in a thread


class RequestFailed(Exception):
    """An error answered with ``status`` and a JSON body naming the field."""

    def __init__(self, status: int, error: str, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.retry_after = status, error, field, retry_after

    def body(self, request_id: str) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, "request_id": request_id}


def input_summary(bodies: list[SingleRequest]) -> dict[str, Any]:
    """What a log may say about the input: counts, lengths and time ranges, never values."""
    stamps = [b.timestamps for b in bodies if b.timestamps]
    return {"series": len(bodies), "rows": [len(b.data) for b in bodies][:16],
            "pred_len": [b.pred_len for b in bodies][:16],
            "time_range": [min(s[0] for s in stamps), max(s[-1] for s in stamps)] if stamps else None}


class ForecastRunner:
    """The loaded variants (set once loading ends) and the shared forecast path over them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.variants: list[Variant] = []
        self.load_error: str | None = None
        # Every forecast (each call of run) is handed here to be recorded; None: not recorded.
        self.recorder: Optional[Callable[[Forecast], None]] = None
        self.budget = make_limiter(settings.cost_budget_per_minute, settings.rate_limit_url,
                                   name="cost")

    def variant_for(self, body: SingleRequest) -> Variant:
        if not self.variants:
            raise RequestFailed(503, "model not loaded yet" if not self.load_error
                                else f"model failed to load: {self.load_error}", retry_after=5)
        return choose(self.variants, [v.weight for v in self.variants],
                      [v.aliases for v in self.variants], body.model_version, body.sticky_key)

    def check_batch_size(self, bodies: list[SingleRequest]) -> None:
        if not bodies:
            raise RequestFailed(400, "batch: must hold at least one item", "batch")
        if len(bodies) > self.settings.max_batch_items:
            raise RequestFailed(400, f"batch: {len(bodies)} items exceed the limit of "
                                     f"{self.settings.max_batch_items}", "batch")

    def prepare(self, bodies: list[SingleRequest], index_errors: bool) -> list[tuple]:
        """(variant, runtime request, prepared series) per body; 400 naming the first bad field."""
        if index_errors:
            self.check_batch_size(bodies)
        prepared = []
        with tracer().start_as_current_span("validation", attributes={"kronos.series": len(bodies)}):
            for i, body in enumerate(bodies):
                try:
                    variant = self.variant_for(body)
                    request = to_forecast_request(body, self.settings)
                    prepared.append((variant, request, variant.forecaster.prepare(request)))
                except InputError as exc:
                    field = f"batch[{i}].{exc.field}" if index_errors else exc.field
                    raise RequestFailed(400, f"{field}: {exc.message}", field) from exc
        return prepared

    async def run(self, bodies: list[SingleRequest], request_id: str, index_errors: bool,
                  priority: Priority = Priority.INTERACTIVE, route: str = "",
                  key_id: str = "", deadline: float | None = None) -> list[dict[str, Any]]:
        """Validate every body, forecast them at ``priority`` (before ``deadline``, a
        ``time.monotonic()``, when given); response bodies in input order.

        Every call, failed ones included, is handed to ``recorder`` with ``route`` and ``key_id``
        (status 499 when the caller canceled it: a timeout or a canceled job)."""
        started = time.perf_counter()
        results, status, error = None, 500, None
        try:
            results = await self._forecast(bodies, request_id, index_errors, priority, key_id,
                                           deadline)
            status = 200
            return results
        except RequestFailed as exc:
            status, error = exc.status, exc.error
            raise
        except asyncio.CancelledError:
            status, error = 499, "canceled before it finished (timeout or job canceled)"
            raise
        except Exception as exc:
            error = f"forecast failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            if self.recorder is not None:
                self.recorder(Forecast(request_id, route, key_id, bodies, results, status,
                                       (time.perf_counter() - started) * 1000, error))

    async def admit(self, prepared: list[tuple], index_errors: bool, priority: Priority,
                    key_id: str) -> None:
        """Cost control: 400 past ``max_request_cost`` per series; 429 past the caller's
        ``cost_budget_per_minute`` (interactive calls; per API key, anonymous callers share one)."""
        costs = []
        for i, (variant, request, series) in enumerate(prepared):
            forecaster = variant.forecaster
            cost = series_cost(series.length, series.horizon, request.sampling.sample_count,
                               forecaster.max_context, forecaster.sliding == "exact")
            if cost > self.settings.max_request_cost:
                field = f"batch[{i}]" if index_errors else "body"
                raise RequestFailed(400, f"{field}: estimated cost {cost} positions exceeds "
                                         f"max_request_cost {self.settings.max_request_cost}; send "
                                         "fewer rows, a shorter pred_len or fewer sample paths", field)
            costs.append(cost)
        if self.budget is not None and priority == Priority.INTERACTIVE:
            wait = await self.budget.retry_after(key_id or "anonymous", sum(costs))
            if wait:
                METRICS.budget_rejections.inc()
                raise RequestFailed(429, f"cost budget exceeded: cost_budget_per_minute is "
                                         f"{self.settings.cost_budget_per_minute:g} positions",
                                    "cost_budget_per_minute", retry_after=wait)

    async def _forecast(self, bodies: list[SingleRequest], request_id: str, index_errors: bool,
                        priority: Priority, key_id: str = "", deadline: float | None = None
                        ) -> list[dict[str, Any]]:
        if sum(len(body.data) for body in bodies) > OFF_LOOP_ROWS:  # keep the event loop free
            prepared = await asyncio.to_thread(self.prepare, bodies, index_errors)
        else:
            prepared = self.prepare(bodies, index_errors)
        await self.admit(prepared, index_errors, priority, key_id)
        by_variant: dict[int, list[int]] = {}
        for i, (variant, _, _) in enumerate(prepared):
            by_variant.setdefault(id(variant), []).append(i)
        results: list[Any] = [None] * len(bodies)
        for indices in by_variant.values():
            variant = prepared[indices[0]][0]
            try:
                outputs = await variant.engine.submit([prepared[i][1:] for i in indices],
                                                      priority=priority, deadline=deadline)
            except QueueFull as exc:
                METRICS.queue_full.labels(model_version=variant.version).inc()
                raise RequestFailed(503, f"overloaded: {exc}", retry_after=1) from exc
            with tracer().start_as_current_span("postprocess"):
                for i, output in zip(indices, outputs):
                    METRICS.series_length.labels(model_version=variant.version).observe(
                        output.history_rows)
                    METRICS.horizon.labels(model_version=variant.version).observe(len(output.mean))
                    results[i] = to_response(output, bool(bodies[i].quantiles), variant.source.name,
                                             variant.version, variant.device, request_id,
                                             prepared[i][2].calendar.to_dict())
        return results
