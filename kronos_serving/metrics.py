"""Prometheus metrics of the service, shared by all workers (BentoML's multiprocess mode).

Created through ``bentoml.metrics`` so they appear on BentoML's ``/metrics`` beside its own;
``/v1/metrics`` serves the same text.
"""
from __future__ import annotations

from functools import cached_property

import bentoml

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def _histogram(name: str, documentation: str, buckets: tuple, labels: tuple = ("model_version",)):
    return bentoml.metrics.Histogram(name=name, documentation=documentation,
                                     labelnames=list(labels), buckets=buckets)


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
        return _histogram("kronos_inference_duration_seconds", "Runtime call duration", LATENCY_BUCKETS)

    @cached_property
    def batch_size(self):
        return _histogram("kronos_batch_size", "Series per runtime call", SIZE_BUCKETS)

    @cached_property
    def queue_wait(self):
        return _histogram("kronos_queue_wait_seconds", "Time a series waited for its batch",
                          LATENCY_BUCKETS)

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
        return bentoml.metrics.Gauge(
            name="kronos_in_flight_requests", documentation="Forecast requests being served",
            labelnames=["route"], multiprocess_mode="livesum")

    @cached_property
    def connections_closed(self):
        return bentoml.metrics.Counter(
            name="kronos_connections_closed",
            documentation="Connections closed by the guard (limit, header or body timeout)",
            labelnames=["reason"])

    @cached_property
    def model_info(self):
        return bentoml.metrics.Gauge(
            name="kronos_model_info", documentation="Loaded model variants (1 per worker)",
            labelnames=["model", "version", "device"], multiprocess_mode="livesum")


def exposition() -> tuple[bytes, str]:
    """The Prometheus text BentoML serves on /metrics (all workers), and its content type."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    client = BentoMLContainer.metrics_client.get()
    return client.generate_latest(), client.CONTENT_TYPE_LATEST


METRICS = Metrics()
