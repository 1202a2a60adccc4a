"""OpenTelemetry: the service's tracing config and the spans it adds to BentoML's request span."""
from __future__ import annotations

from typing import Any

from opentelemetry import trace

from .settings import Settings


def tracing_config(settings: Settings) -> dict[str, Any]:
    """The ``tracing=`` argument of ``@bentoml.service`` (OTLP export when an endpoint is set)."""
    config: dict[str, Any] = {"sample_rate": settings.trace_sample_rate}
    if settings.otlp_endpoint:
        protocol = settings.otlp_protocol
        config.update(exporter_type="otlp",
                      otlp={"protocol": protocol, "endpoint": settings.otlp_endpoint, protocol: {}})
    return config


def tracer() -> trace.Tracer:
    """The tracer of BentoML's provider (its exporter and sampler), else the global one."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.tracer_provider.get().get_tracer("kronos")
    except Exception:
        return trace.get_tracer("kronos")


def record_engine_spans(future, trace_context, model_version: str) -> None:
    """For one answered series: its wait for admission and its time in the engine."""
    timing = getattr(future, "timing", None)
    if timing is None or timing[1] is None or future.cancelled():
        return
    submitted, admitted, finished = timing
    spans = tracer()
    attributes = {"kronos.model_version": model_version}
    spans.start_span("queue_wait", context=trace_context, start_time=submitted,
                     attributes=attributes).end(end_time=admitted)
    span = spans.start_span("engine", context=trace_context, start_time=admitted,
                            attributes=attributes)
    if future.exception() is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(future.exception()).__name__))
    span.end(end_time=finished)
