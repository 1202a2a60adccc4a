"""Forecast records: built and written off the request path, read back by request id.

The request path only hands a :class:`Forecast` (bodies, responses, timing) to
:meth:`RecordWriter.submit`, a non-blocking put on a bounded queue. A thread turns them into
rows (parameters, input summary, sha256 of the canonical input, the mean path and quantiles)
and inserts them in batches every ``FLUSH_S`` or ``BATCH_ROWS`` rows. A full queue or a store
that is down drops records, counted in ``kronos_store_records_dropped_total`` and logged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Optional

from sqlalchemy import Engine, delete, select

from ..metrics import METRICS
from ..schemas import SingleRequest
from ..settings import Settings
from .schema import ForecastRecord, utcnow
from .errors import describe
from .outcomes import live_fields

log = logging.getLogger("kronos.store")
FLUSH_S = 0.1
BATCH_ROWS = 256
LOG_EVERY_S = 10.0
RECORD_FIELDS = ("request_id", "item", "route", "key_id", "model", "model_version", "device",
                 "parameters", "seed", "input_summary", "input_sha256", "input", "predictions",
                 "latency_ms", "status", "error")


@dataclass
class Forecast:
    """One answered call of the shared forecast path (all its series), as handed to the writer."""

    request_id: str
    route: str
    key_id: str
    bodies: list[SingleRequest]
    results: Optional[list[dict[str, Any]]]  # None when it failed
    status: int
    latency_ms: float
    error: Optional[str] = None
    created_at: datetime = field(default_factory=utcnow)


def canonical_input(body: SingleRequest) -> dict[str, Any]:
    """The values a forecast is computed from (rows, their names and times)."""
    return {"data": body.data, "columns": body.columns, "timestamps": body.timestamps,
            "future_timestamps": body.future_timestamps}


def input_sha256(body: SingleRequest) -> str:
    text = json.dumps(canonical_input(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def series_summary(body: SingleRequest) -> dict[str, Any]:
    """Counts and time range only, never values."""
    return {"rows": len(body.data), "values_per_row": len(body.data[0]) if body.data else 0,
            "time_range": [body.timestamps[0], body.timestamps[-1]] if body.timestamps else None}


def parameters(body: SingleRequest, settings: Settings) -> dict[str, Any]:
    """The forecast's parameters, request defaults filled in."""
    def pick(name: str) -> Any:
        value = getattr(body, name)
        return value if value is not None else getattr(settings, f"default_{name}")
    return {"pred_len": pick("pred_len"), "sample_count": pick("sample_count"),
            "temperature": pick("temperature"), "top_k": pick("top_k"), "top_p": pick("top_p"),
            "lookback": body.lookback, "quantiles": body.quantiles, "columns": body.columns,
            "model_version": body.model_version}


def rows_of(forecast: Forecast, settings: Settings, store_inputs: bool) -> list[dict[str, Any]]:
    """One table row per series."""
    rows = []
    for item, body in enumerate(forecast.bodies):
        result = forecast.results[item] if forecast.results else {}
        rows.append({
            "request_id": forecast.request_id, "item": item, "created_at": forecast.created_at,
            "route": forecast.route, "key_id": forecast.key_id, "model": result.get("model"),
            "model_version": result.get("model_version"), "device": result.get("device"),
            "parameters": parameters(body, settings),
            "seed": result.get("seed", body.seed), "input_summary": series_summary(body),
            "input_sha256": input_sha256(body),
            "input": canonical_input(body) if store_inputs else None,
            "predictions": ({"mean": result["predictions"], "quantiles": result.get("quantiles")}
                            if result else None),
            "latency_ms": forecast.latency_ms, "status": forecast.status, "error": forecast.error,
            **live_fields(body, result)})
    return rows


def public(record: Any) -> dict[str, Any]:
    """What ``GET /v1/forecasts/{request_id}`` answers for one record."""
    body = {name: getattr(record, name) for name in RECORD_FIELDS}
    body["created_at"] = record.created_at.isoformat(timespec="milliseconds") + "Z"
    return body


class RecordStore:
    """Reads and retention of forecast records."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(ForecastRecord.__table__.insert(), rows)

    def by_request(self, request_id: str, key_id: Optional[str] = None) -> list[dict[str, Any]]:
        """The records of one request id, in item order (only ``key_id``'s when given)."""
        query = (select(ForecastRecord).where(ForecastRecord.request_id == request_id)
                 .order_by(ForecastRecord.item, ForecastRecord.id))
        if key_id is not None:
            query = query.where(ForecastRecord.key_id == key_id)
        with self.engine.begin() as connection:
            return [public(row) for row in connection.execute(query)]

    def delete_before(self, cutoff: datetime) -> int:
        with self.engine.begin() as connection:
            return connection.execute(delete(ForecastRecord).where(
                ForecastRecord.created_at < cutoff)).rowcount


class RecordWriter:
    """A bounded queue of forecasts and the thread that writes them in batches."""

    def __init__(self, records: RecordStore, settings: Settings,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.records, self.settings, self.ready = records, settings, ready
        self.queue: queue.Queue[Forecast] = queue.Queue(maxsize=settings.record_queue_size)
        self.pending = 0  # forecasts taken from the queue and not written yet
        self.lock = threading.Lock()
        self.dropped = 0
        self.last_log = 0.0
        self.thread = threading.Thread(target=self._run, name="kronos-record-writer", daemon=True)
        self.thread.start()

    def submit(self, forecast: Forecast) -> None:
        """Never blocks: a full queue drops the record (counted)."""
        try:
            self.queue.put_nowait(forecast)
        except queue.Full:
            self._dropped(len(forecast.bodies), "queue_full", None)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or dropped); for tests and shutdown."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.queue.empty() and self.pending == 0:
                    return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        while True:
            batch = self._take()
            try:
                self._write(batch)
            finally:
                with self.lock:
                    self.pending -= len(batch)

    def _take(self) -> list[Forecast]:
        first = self.queue.get()
        with self.lock:
            self.pending += 1
        batch, rows, deadline = [first], len(first.bodies), time.monotonic() + FLUSH_S
        while rows < BATCH_ROWS:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            with self.lock:
                self.pending += 1
            batch.append(item)
            rows += len(item.bodies)
        return batch

    def _write(self, batch: list[Forecast]) -> None:
        started = time.perf_counter()
        try:
            if not self.ready():
                raise ConnectionError("store not ready (migration pending or database down)")
            rows = [row for forecast in batch
                    for row in rows_of(forecast, self.settings, self.settings.store_inputs)]
            self.records.insert(rows)
        except Exception as exc:  # the store is down or refused: drop, count, say so
            METRICS.store_errors.labels(operation="record").inc()
            self._dropped(sum(len(f.bodies) for f in batch), "store_error", exc)
            return
        METRICS.store_write.labels(operation="record").observe(time.perf_counter() - started)

    def _dropped(self, count: int, reason: str, exc: Optional[Exception]) -> None:
        METRICS.records_dropped.labels(reason=reason).inc(count)
        with self.lock:
            self.dropped += count
            if time.monotonic() - self.last_log < LOG_EVERY_S:
                return
            self.last_log, total = time.monotonic(), self.dropped
        log.error("forecast records dropped", extra={
            "event": "records_dropped", "reason": reason, "count": count, "dropped_total": total,
            "error": describe(exc) if exc else None})


def cutoff(retention_days: float) -> datetime:
    return utcnow() - timedelta(days=retention_days)
