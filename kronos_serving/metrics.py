"""Prometheus metrics of the service, shared by all workers (BentoML's multiprocess mode).

Created through ``bentoml.metrics`` so they appear on BentoML's ``/metrics`` beside its own;
``/v1/metrics`` serves the same text.
"""
from __future__ import annotations

from functools import cached_property

import bentoml

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
ROWS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ERROR_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100, 1000)
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _histogram(name: str, documentation: str, buckets: tuple, labels: tuple = ("model_version",)):
    return bentoml.metrics.Histogram(name=name, documentation=documentation,
                                     labelnames=list(labels), buckets=buckets)


def _gauge(name: str, documentation: str, labels: list[str], mode: str):
    return bentoml.metrics.Gauge(name=name, documentation=documentation, labelnames=labels,
                                 multiprocess_mode=mode)


class Metrics:
    """Lazily created metric families (the multiprocess directory is set up by BentoML first)."""

    @cached_property
    def requests(self):
        return bentoml.metrics.Counter(
            name="kronos_requests", documentation="Forecast requests by route, status and model version",
            labelnames=["route", "status", "model_version"])

    @cached_property
    def request_duration(self):
        return _histogram("kronos_request_duration_seconds", "Request latency", LATENCY_BUCKETS,
                          ("route", "model_version"))

    @cached_property
    def inference_duration(self):
        return _histogram("kronos_inference_duration_seconds",
                          "Time a series spent in the engine, admission to answer", LATENCY_BUCKETS)

    @cached_property
    def batch_size(self):
        return _histogram("kronos_batch_size", "Series advanced by one engine decode step",
                          SIZE_BUCKETS)

    @cached_property
    def queue_wait(self):
        return _histogram("kronos_queue_wait_seconds",
                          "Time a series waited for admission to the engine", LATENCY_BUCKETS)

    @cached_property
    def engine_step(self):
        return _histogram("kronos_engine_step_seconds", "Duration of one engine step", STEP_BUCKETS)

    @cached_property
    def budget_rejections(self):
        return bentoml.metrics.Counter(name="kronos_cost_budget_rejections",
                                       documentation="Requests refused past a key's cost budget")

    @cached_property
    def worst_step(self):
        return bentoml.metrics.Gauge(
            name="kronos_engine_worst_step_seconds", documentation="Longest engine step so far",
            labelnames=["model_version"], multiprocess_mode="max")

    @cached_property
    def live_rows(self):
        return _histogram("kronos_engine_live_rows", "Sample paths live in the engine, per step",
                          ROWS_BUCKETS)

    @cached_property
    def admissions(self):
        return bentoml.metrics.Counter(name="kronos_engine_admissions",
                                       documentation="Series admitted to the engine",
                                       labelnames=["model_version"])

    @cached_property
    def completions(self):
        return bentoml.metrics.Counter(name="kronos_engine_completions",
                                       documentation="Series answered by the engine",
                                       labelnames=["model_version"])

    @cached_property
    def urgent_steps(self):
        return bentoml.metrics.Counter(
            name="kronos_engine_urgent_steps", labelnames=["model_version"],
            documentation="Engine steps that ran a series near its deadline first after the short lane")

    @cached_property
    def queued_series(self):
        return bentoml.metrics.Gauge(
            name="kronos_queued_series", documentation="Series submitted and not answered yet",
            labelnames=["model_version"], multiprocess_mode="livesum")

    @cached_property
    def model_load(self):
        return _histogram("kronos_model_load_seconds", "Model load time", LATENCY_BUCKETS)

    @cached_property
    def series_length(self):
        return _histogram("kronos_series_length", "Input rows per series", LENGTH_BUCKETS)

    @cached_property
    def horizon(self):
        return _histogram("kronos_horizon", "Forecast steps per series", LENGTH_BUCKETS)

    @cached_property
    def in_flight(self):
        return _gauge("kronos_in_flight_requests", "Forecast requests being served", ["route"],
                      "livesum")

    @cached_property
    def cache_lookups(self):
        return bentoml.metrics.Counter(
            name="kronos_cache_lookups", labelnames=["result"],
            documentation="Forecast cache lookups: hit, miss, or bypass (not deterministic)")

    @cached_property
    def queue_full(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_full", labelnames=["model_version"],
            documentation="Requests rejected with 503 because the model's queue was full")

    @cached_property
    def model_load_failures(self):
        return bentoml.metrics.Counter(
            name="kronos_model_load_failures", documentation="Model loads that failed (per worker)")

    @cached_property
    def connections_closed(self):
        return bentoml.metrics.Counter(
            name="kronos_connections_closed",
            documentation="Connections closed by the guard (limit, header or body timeout)",
            labelnames=["reason"])

    @cached_property
    def model_info(self):
        return _gauge("kronos_model_info", "Loaded model variants (1 per worker)",
                      ["model", "version", "device"], "livesum")

    @cached_property
    def jobs(self):
        return _gauge("kronos_jobs", "Forecast jobs in the store by status", ["status"],
                      "mostrecent")

    @cached_property
    def job_latency(self):
        return _histogram("kronos_job_duration_seconds", "Job submit-to-finish time by final status",
                          LATENCY_BUCKETS, ("status",))

    @cached_property
    def store_write(self):
        return _histogram("kronos_store_write_seconds", "Store write latency by operation",
                          LATENCY_BUCKETS, ("operation",))

    @cached_property
    def store_errors(self):
        return bentoml.metrics.Counter(
            name="kronos_store_errors", documentation="Failed store operations by operation",
            labelnames=["operation"])

    @cached_property
    def records_dropped(self):
        return bentoml.metrics.Counter(
            name="kronos_store_records_dropped",
            documentation="Forecast records not written (queue_full, store_error)",
            labelnames=["reason"])

    # -- RabbitMQ queue workers (kronos_serving/queue) ---------------------------------------
    @cached_property
    def queue_consumed(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_messages_consumed", documentation="Queue messages received",
            labelnames=["queue"])

    @cached_property
    def queue_redelivered(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_messages_redelivered",
            documentation="Queue messages received again (after a failure, a killed worker or a "
                          "broker restart)", labelnames=["queue"])

    @cached_property
    def queue_replied(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_replies", documentation="Replies confirmed by the broker, by status",
            labelnames=["queue", "status"])

    @cached_property
    def queue_retried(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_messages_retried",
            documentation="Failed queue messages handed back for another attempt", labelnames=["queue"])

    @cached_property
    def queue_dead_lettered(self):
        return bentoml.metrics.Counter(
            name="kronos_queue_messages_dead_lettered",
            documentation="Queue messages sent to the dead-letter queue after their last attempt",
            labelnames=["queue"])

    @cached_property
    def queue_consumers(self):
        return bentoml.metrics.Gauge(
            name="kronos_queue_consumers", documentation="Workers consuming the queue",
            labelnames=["queue"], multiprocess_mode="livesum")

    @cached_property
    def average_inference(self):
        return bentoml.metrics.Gauge(
            name="kronos_average_inference_seconds",
            documentation="Moving average of the forecast time of one queue message (the "
                          "scheduling platform's average_inference_time)",
            labelnames=["queue"], multiprocess_mode="livemostrecent")


class AccuracyMetrics:
    """Live accuracy of close per model version and forecast step (``POST /v1/outcomes``)."""

    @cached_property
    def abs_error(self):
        return _histogram("kronos_forecast_abs_error", "Absolute error of the forecast close once "
                          "the actual candle arrived", ERROR_BUCKETS, ("model_version", "step"))

    @cached_property
    def interval(self):
        return bentoml.metrics.Counter(
            name="kronos_forecast_interval", documentation="Scored forecast steps with quantiles, "
            "by whether the actual close fell inside the outer quantiles",
            labelnames=["model_version", "step", "covered"])


def show_alerting_series(versions: list[str]) -> None:
    """Create the rare-event counters at 0, so alerts and dashboards see a series before the
    first queue-full rejection or load failure (rates over nothing are no data, not 0)."""
    METRICS.model_load_failures  # noqa: B018 (creating it exposes it at 0)
    for version in versions:
        METRICS.queue_full.labels(model_version=version)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text BentoML serves on /metrics (all workers), and its content type."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    client = BentoMLContainer.metrics_client.get()
    return client.generate_latest(), client.CONTENT_TYPE_LATEST


METRICS = Metrics()
ACCURACY = AccuracyMetrics()
