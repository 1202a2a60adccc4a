"""Kronos forecasting service (BentoML 1.4).

Routes: POST /v1/predict/single, POST /v1/predict/batch, POST /v1/backtest, GET /v1/healthz,
/v1/readyz, /v1/metrics (plus BentoML's own /healthz, /readyz, /metrics); forecast jobs (POST/GET
/v1/jobs, GET/DELETE /v1/jobs/{job_id}), forecast records (GET /v1/forecasts/{request_id}), live
accuracy (POST /v1/outcomes, GET /v1/accuracy) and the page at /ui. Every forecast goes through its
variant's engine (continuous batching: concurrent requests share every decode step). Run:
``make serve``.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import torch
from starlette.applications import Starlette

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kronos_runtime import CheckpointError  # noqa: E402
from kronos_serving import bentoml_patches, connections  # noqa: E402
from kronos_serving.accounting import record_request  # noqa: E402
from kronos_serving.accuracy import routes as accuracy_routes  # noqa: E402
from kronos_serving.backtesting import BacktestRequest, serve_backtest  # noqa: E402
from kronos_serving.bento_models import declared_models, model_labels, selection_envs  # noqa: E402
from kronos_serving.cache import ForecastCache  # noqa: E402
from kronos_serving.client_gone import ClientGone, while_connected  # noqa: E402
from kronos_serving.draining import Drain  # noqa: E402
from kronos_serving.forecasting import ForecastRunner, RequestFailed, input_summary  # noqa: E402
from kronos_serving.guard import GuardMiddleware, caller_key_id  # noqa: E402
from kronos_serving.health import health_app  # noqa: E402
from kronos_serving.jobs import api as jobs_api  # noqa: E402
from kronos_serving.jobs.worker import JobWorker  # noqa: E402
from kronos_serving.logs import configure_json_logging, current_trace_ids  # noqa: E402
from kronos_serving.queue import QueueConsumer, StoreJobRecorder  # noqa: E402
from kronos_serving.metrics import METRICS, show_alerting_series  # noqa: E402
from kronos_serving.metrics_dir import isolate_metrics_dir  # noqa: E402
from kronos_serving.openapi import OpenAPIMiddleware  # noqa: E402
from kronos_serving.placement import visible_gpus, worker_device  # noqa: E402
from kronos_serving.schemas import BatchRequest, SingleRequest  # noqa: E402
from kronos_serving.settings import Settings, load_settings  # noqa: E402
from kronos_serving.store import RecordWriter, Store  # noqa: E402
from kronos_serving.tracing import tracing_config  # noqa: E402
from kronos_serving.ui_app import ui_app  # noqa: E402
from kronos_serving.validation_errors import ValidationErrorMiddleware  # noqa: E402
from kronos_serving.variants import load_variant, resolve_sources  # noqa: E402
from kronos_serving.worker_readiness import SiblingReadiness, watch_siblings_in_container  # noqa: E402

log = logging.getLogger("kronos.service")
SETTINGS = load_settings()
V1_APP = Starlette(routes=[*health_app.routes, *jobs_api.routes, *accuracy_routes])  # at /v1
isolate_metrics_dir(bentoml.server_context.worker_index)
bentoml_patches.apply(SETTINGS.offload_body_kb * 1024, SETTINGS.max_list_items)
connections.install(connections.limits_from(SETTINGS))


def service_resources(settings: Settings) -> dict[str, Any]:
    """BentoML resource hints; a GPU only when the device is CUDA."""
    resources: dict[str, Any] = {"cpu": str(settings.cpu), "memory": settings.memory}
    if settings.uses_gpu:
        resources["gpu"] = settings.gpu
    return resources


@bentoml.asgi_app(V1_APP, path="/v1")
@bentoml.asgi_app(ui_app, path="/ui")
@bentoml.service(name="kronos", resources=service_resources(SETTINGS), workers=SETTINGS.workers,
                 traffic={"timeout": SETTINGS.timeout_s + 30}, tracing=tracing_config(SETTINGS),
                 envs=selection_envs(SETTINGS), labels=model_labels(SETTINGS))
class KronosService(declared_models(SETTINGS)):
    """Single and batch forecasts over one or more (A/B) Kronos model variants."""

    def __init__(self) -> None:
        index = bentoml.server_context.worker_index
        self.settings = dataclasses.replace(SETTINGS, device=worker_device(
            SETTINGS.device, index, visible_gpus() if SETTINGS.uses_gpu else 0))
        configure_json_logging(SETTINGS.log_level)
        torch.set_num_threads(SETTINGS.torch_threads)
        self.runner = ForecastRunner(self.settings)
        self.cache = ForecastCache(self.settings)
        self.store = Store(SETTINGS)
        if SETTINGS.record_forecasts:
            self.runner.recorder = RecordWriter(self.store.records, SETTINGS, self.store.ready).submit
        self.jobs = JobWorker(self.store, self.runner, SETTINGS, paused=lambda: self.drain.draining)
        self.siblings = SiblingReadiness(SETTINGS.workers)
        self.drain = Drain(SETTINGS.drain_delay_s, on_drain=self.siblings.unmark)
        watch_siblings_in_container(self.siblings)
        self.queue = QueueConsumer(SETTINGS, self.runner,
                                   StoreJobRecorder(self.store, self.jobs, SETTINGS.job_lease_s),
                                   paused=lambda: self.drain.draining)
        if not self.drain.install():
            log.warning("SIGTERM handler not installed: readiness will not fail before shutdown",
                        extra={"event": "drain_unavailable"})
        self.loading = threading.Thread(target=self._load, name="kronos-model-load", daemon=True)
        self.loading.start()

    # -- model lifecycle ---------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.runner.variants = [load_variant(self.settings, source, weight)
                                    for source, weight in resolve_sources(self.settings)]
            gc.freeze()  # full collections skip what startup made (short pauses under load)
            show_alerting_series([v.version for v in self.runner.variants])
            if not self.siblings.mark_ready(f"{bentoml.server_context.worker_index or 1} "
                                            f"{self.settings.device}"):
                log.warning("cannot write the worker-ready marker: readiness covers this worker only",
                            extra={"event": "sibling_readiness_unavailable",
                                   "directory": str(self.siblings.directory)})
        except Exception as exc:  # a bad model must not crash-loop the worker: readyz says why
            self.runner.load_error = f"{type(exc).__name__}: {exc}"
            METRICS.model_load_failures.inc()
            log.error("model load failed", exc_info=not isinstance(exc, CheckpointError),
                      extra={"event": "model_load_failed", "error": self.runner.load_error})

    @bentoml.on_startup
    async def start_background_work(self) -> None:
        """The job runner and (when configured) the RabbitMQ consumer, on this worker's event
        loop; both wait for the model."""
        self.jobs.start()
        self.queue.start()

    @bentoml.on_shutdown
    async def stop_background_work(self) -> None:
        await self.queue.stop()
        await self.jobs.stop()

    def __is_ready__(self) -> bool:
        return (bool(self.runner.variants) and self.siblings.all_ready()
                and not self.queue.blocks_readiness())

    def readiness(self) -> dict[str, Any]:
        """What /v1/readyz reports."""
        if self.drain.draining:
            return {"ready": False, "status": "draining", "error": None}
        if not self.runner.variants:
            return {"ready": False, "status": "failed" if self.runner.load_error else "loading",
                    "error": self.runner.load_error}
        if not self.siblings.all_ready():  # this worker is loaded, a sibling is not yet
            return {"ready": False, "status": "loading", "error": None,
                    "workers_ready": f"{self.siblings.ready_workers()}/{self.siblings.workers}"}
        if self.queue.blocks_readiness():
            return {"ready": False, "status": "queue_unavailable", "error": self.queue.error,
                    "queue": self.queue.status()}
        first = self.runner.variants[0]
        return {"ready": True, "status": "ready", "workers": self.settings.workers,
                "device": first.device, "worker_devices": self.siblings.worker_devices(),
                "threads": torch.get_num_threads(),
                "model": first.source.name, "model_version": first.version,
                "max_context": first.forecaster.max_context,
                "dev_checkpoint": any(v.source.is_dev for v in self.runner.variants),
                "warning": ("serving a generated dev checkpoint with random weights"
                            if any(v.source.is_dev for v in self.runner.variants) else None),
                "variants": [{"model": v.source.name, "model_version": v.version,
                              "weight": v.weight, "device": v.device,
                              "max_context": v.forecaster.max_context} for v in self.runner.variants],
                "queue": self.queue.status(),
                "store": self.store.state()}

    # -- request handling --------------------------------------------------------------------
    async def _serve(self, ctx: bentoml.Context, route: str, bodies: list[SingleRequest],
                     batch: bool) -> dict[str, Any]:
        started = time.perf_counter()
        request_id = ctx.request.headers.get("x-request-id") or uuid.uuid4().hex
        ctx.response.headers["X-Request-ID"] = request_id
        trace_id, _ = current_trace_ids()
        if trace_id:
            ctx.response.headers["X-Trace-ID"] = trace_id
        version = "none"
        in_flight = METRICS.in_flight.labels(route=route)
        in_flight.inc()
        try:
            try:
                results, cached = await while_connected(
                    self.cache.run(self.runner, bodies, request_id, batch, route=route,
                                   key_id=caller_key_id(ctx.request.scope) or "",
                                   deadline=time.monotonic() + self.settings.timeout_s),
                    ctx.request, self.settings.timeout_s)
                if cached != "bypass":
                    ctx.response.headers["X-Cache"] = cached
            except TimeoutError as exc:  # its series leave the engine at the next step
                raise RequestFailed(504, f"timed out after {self.settings.timeout_s} s "
                                         "(queue wait and forecast)", retry_after=5) from exc
            except ClientGone as exc:  # nobody to answer: its series leave the engine too
                raise RequestFailed(499, "client disconnected before the answer") from exc
            version = ",".join(sorted({r["model_version"] for r in results})) or "none"
            ctx.response.status_code = 200
            body: dict[str, Any] = {"results": results} if batch else results[0]
        except RequestFailed as exc:
            ctx.response.status_code = exc.status
            if exc.retry_after:
                ctx.response.headers["Retry-After"] = str(exc.retry_after)
            body = exc.body(request_id)
        except Exception as exc:  # the runtime failed on this batch: a clear 500, worker lives on
            log.exception("forecast failed", extra={"event": "forecast_failed",
                                                    "request_id": request_id, "path": route,
                                                    "input": input_summary(bodies)})
            ctx.response.status_code = 500
            body = {"error": f"forecast failed: {type(exc).__name__}: {exc}",
                    "request_id": request_id}
        finally:
            in_flight.dec()
        record_request(route, request_id, ctx.response.status_code, time.perf_counter() - started,
                       version, device=self.settings.device, error=body.get("error"),
                       input=input_summary(bodies))
        return body

    @bentoml.api(route="/v1/predict/single", input_spec=SingleRequest)
    async def predict_single(self, ctx: bentoml.Context, **fields: Any) -> dict[str, Any]:
        """Forecast one series."""
        return await self._serve(ctx, "/v1/predict/single", [SingleRequest(**fields)], batch=False)

    @bentoml.api(route="/v1/predict/batch", input_spec=BatchRequest)
    async def predict_batch(self, ctx: bentoml.Context, batch: list[SingleRequest]) -> dict[str, Any]:
        """Forecast several series; results come back in order."""
        return await self._serve(ctx, "/v1/predict/batch", batch, batch=True)

    @bentoml.api(route="/v1/backtest", input_spec=BacktestRequest)
    async def backtest(self, ctx: bentoml.Context, **fields: Any) -> dict[str, Any]:
        """Rolling-origin backtest of the served model versions against naive baselines."""
        return await serve_backtest(self.runner, ctx, BacktestRequest(**fields))


KronosService.add_asgi_middleware(
    GuardMiddleware, api_keys=SETTINGS.api_keys, protect_metrics=SETTINGS.protect_metrics,
    max_body_bytes=int(SETTINGS.max_request_size_mb * 1024 * 1024),
    rate_limit_per_minute=SETTINGS.rate_limit_per_minute, rate_limit_url=SETTINGS.rate_limit_url,
    trusted_proxies=SETTINGS.trusted_proxies)
KronosService.add_asgi_middleware(ValidationErrorMiddleware)
KronosService.add_asgi_middleware(OpenAPIMiddleware, secured=bool(SETTINGS.api_keys))
