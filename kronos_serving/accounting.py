"""One place that counts and logs every answered forecast request (handler and schema errors)."""
from __future__ import annotations

import logging
from typing import Any

from .metrics import METRICS

log = logging.getLogger("kronos.service")


def record_request(route: str, request_id: str, status: int, seconds: float,
                   model_version: str = "none", **fields: Any) -> None:
    """Request count and latency metrics, and the JSON ``request`` log line (warning on 4xx/5xx)."""
    METRICS.requests.labels(route=route, status=str(status), model_version=model_version).inc()
    METRICS.request_duration.labels(route=route, model_version=model_version).observe(seconds)
    log.log(logging.WARNING if status >= 400 else logging.INFO, "request",
            extra={"event": "request", "request_id": request_id, "path": route,
                   "latency_ms": round(seconds * 1000, 3), "model_version": model_version,
                   "result_status": status, **fields})
