"""OpenTelemetry: the service's tracing config and the spans it adds to BentoML's request span."""
from __future__ import annotations

from typing import Any

from opentelemetry import trace

from .batcher import BatchStats
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


def record_batch_spans(stats: BatchStats, model_version: str) -> None:
    """Per request in the batch: its queue wait and the batch inference it shared."""
    spans = tracer()
    for job in stats.jobs:
        attributes = {"kronos.model_version": model_version, "kronos.batch_size": stats.series,
                      "kronos.batch_rows": stats.rows}
        spans.start_span("queue_wait", context=job.trace_context, start_time=job.queued_ns,
                         attributes=attributes).end(end_time=stats.started_ns)
        span = spans.start_span("batch_inference", context=job.trace_context,
                                start_time=stats.started_ns, attributes=attributes)
        if stats.failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "runtime call failed"))
        span.end(end_time=stats.ended_ns)
