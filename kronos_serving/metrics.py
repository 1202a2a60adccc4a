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


class Metrics:
    """Lazily created metric families (the multiprocess directory is set up by BentoML first)."""

    @cached_property
    def requests(self):
        return bentoml.metrics.Counter(
            name="kronos_requests", documentation="Forecast requests by route, status and model version",
            labelnames=["route", "status", "model_version"])

    @cached_property
    def request_duration(self):
        return bentoml.metrics.Histogram(
            name="kronos_request_duration_seconds", documentation="Request latency",
            labelnames=["route", "model_version"], buckets=LATENCY_BUCKETS)

    @cached_property
    def inference_duration(self):
        return bentoml.metrics.Histogram(
            name="kronos_inference_duration_seconds", documentation="Runtime call duration",
            labelnames=["model_version"], buckets=LATENCY_BUCKETS)

    @cached_property
    def batch_size(self):
        return bentoml.metrics.Histogram(
            name="kronos_batch_size", documentation="Series per runtime call",
            labelnames=["model_version"], buckets=SIZE_BUCKETS)

    @cached_property
    def queue_wait(self):
        return bentoml.metrics.Histogram(
            name="kronos_queue_wait_seconds", documentation="Time a series waited for its batch",
            labelnames=["model_version"], buckets=LATENCY_BUCKETS)

    @cached_property
    def model_load(self):
        return bentoml.metrics.Histogram(
            name="kronos_model_load_seconds", documentation="Model load time",
            labelnames=["model_version"], buckets=LATENCY_BUCKETS)

    @cached_property
    def series_length(self):
        return bentoml.metrics.Histogram(
            name="kronos_series_length", documentation="Input rows per series",
            labelnames=["model_version"], buckets=LENGTH_BUCKETS)

    @cached_property
    def horizon(self):
        return bentoml.metrics.Histogram(
            name="kronos_horizon", documentation="Forecast steps per series",
            labelnames=["model_version"], buckets=LENGTH_BUCKETS)

    @cached_property
    def in_flight(self):
        return bentoml.metrics.Gauge(
            name="kronos_in_flight_requests", documentation="Forecast requests being served",
            labelnames=["route"], multiprocess_mode="livesum")

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
