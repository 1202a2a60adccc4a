"""Live accuracy: ``POST /v1/outcomes`` scores recorded forecasts against actual candles;
``GET /v1/accuracy?model_version=&since=`` answers the backtest's metrics over the scores.

Forecasts take part when their request carried a ``series_id`` (and forecast records are on).
Prometheus gets the absolute error of close and whether close fell inside the outer quantiles,
per model version and forecast step, once per scored step.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kronos_runtime import InputError
from kronos_runtime.backtest import json_safe
from kronos_runtime.quality import column_metrics
from kronos_runtime.series import (ALL_COLUMNS, check_increasing, normalise_columns, numeric_values,
                                   to_datetime_index)

from .jobs.api import _service, error, store_down
from .jobs.worker import store_call
from .metrics import ACCURACY
from .requests import _frame
from .schemas import Row
from .validation_errors import with_field

log = logging.getLogger("kronos.accuracy")
MAX_STEP_LABEL = 64  # steps past it share the label "65+" (bounded label values)


class OutcomesRequest(BaseModel):
    """Actual candles of one series."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    series_id: str = Field(min_length=1, max_length=255)
    timestamps: list[str] = Field(min_length=1, max_length=10_000)
    data: list[Row] = Field(min_length=1, max_length=10_000)
    columns: Optional[list[str]] = None


def candles_of(body: OutcomesRequest) -> tuple[Any, list[dict[str, float]]]:
    """Timestamps and one ``{column: value}`` per row; InputError naming the field."""
    frame = numeric_values(normalise_columns(_frame(body)))
    if not np.isfinite(frame.to_numpy()).all():
        raise InputError("data", "values must be finite numbers")
    stamps = to_datetime_index(body.timestamps, "timestamps")
    if len(stamps) != len(frame):
        raise InputError("timestamps", f"has {len(stamps)} entries for {len(frame)} rows")
    check_increasing(stamps, "timestamps")
    return stamps, frame.to_dict(orient="records")


def step_label(step: int) -> str:
    return str(step) if step <= MAX_STEP_LABEL else f"{MAX_STEP_LABEL + 1}+"


def observe(scored: list[dict[str, Any]]) -> None:
    """Prometheus: each newly scored step once."""
    for score in scored:
        values, labels = score["values"], {"model_version": score["model_version"] or "none",
                                           "step": step_label(score["step"])}
        if "close" not in values["actual"]:
            continue
        actual = values["actual"]["close"]
        ACCURACY.abs_error.labels(**labels).observe(abs(values["forecast"]["close"] - actual))
        levels = sorted(values["quantiles"], key=float)
        if len(levels) >= 2:
            low, high = values["quantiles"][levels[0]]["close"], values["quantiles"][levels[-1]]["close"]
            ACCURACY.interval.labels(**labels, covered=str(low <= actual <= high).lower()).inc()


def column_arrays(scores: list[dict[str, Any]], column: str, key: str) -> np.ndarray:
    return np.array([np.nan if s["values"][key].get(column) is None else s["values"][key][column]
                     for s in scores], dtype=np.float64)


def accuracy_metrics(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The backtest's metrics (no CRPS: sample paths are not stored) per version and column."""
    by_version: dict[str, list[dict[str, Any]]] = {}
    for score in scores:
        by_version.setdefault(score["model_version"] or "none", []).append(score)
    metrics: dict[str, Any] = {}
    for version, rows in sorted(by_version.items()):
        metrics[version] = {}
        for column in ALL_COLUMNS:
            with_column = [s for s in rows if column in s["values"]["actual"]]
            if not with_column:
                continue
            levels = set.intersection(*(set(s["values"]["quantiles"]) for s in with_column))
            quantiles = {float(q): np.array([s["values"]["quantiles"][q][column] for s in with_column])
                         for q in levels}
            metrics[version][column] = column_metrics(
                column_arrays(with_column, column, "actual"),
                column_arrays(with_column, column, "forecast"),
                column_arrays(with_column, column, "last"), column_arrays(with_column, column, "scale"),
                quantiles or None)
    return metrics


async def post_outcomes(request: Request) -> JSONResponse:
    try:
        body = OutcomesRequest.model_validate(json.loads(await request.body() or b"null"))
        stamps, candles = candles_of(body)
    except ValueError as exc:  # malformed JSON, schema errors (ValidationError), InputError
        if isinstance(exc, InputError):
            return error(400, f"{exc.field}: {exc.message}", exc.field)
        if isinstance(exc, ValidationError):
            shaped = with_field({"detail": json.loads(exc.json(include_input=False, include_url=False))})
            return error(400, shaped["error"], shaped["field"])
        return error(400, "body: malformed JSON", "body")
    store = _service().store
    try:
        result = await store_call("outcomes", store.outcomes.add, body.series_id, stamps, candles)
    except Exception as exc:
        return store_down(exc)
    observe(result["scored"])
    log.info("outcomes scored", extra={"event": "outcomes", "outcomes": len(candles),
                                       "new_outcomes": result["new_outcomes"],
                                       "scored_steps": len(result["scored"]),
                                       "time_range": [stamps[0].isoformat(), stamps[-1].isoformat()]})
    return JSONResponse({"series_id": body.series_id, "outcomes": len(candles),
                         "new_outcomes": result["new_outcomes"], "forecasts": result["forecasts"],
                         "scored_steps": len(result["scored"])})


async def get_accuracy(request: Request) -> JSONResponse:
    version = request.query_params.get("model_version") or None
    since_text = request.query_params.get("since")
    try:
        since = to_datetime_index([since_text], "since")[0].to_pydatetime() if since_text else None
    except InputError as exc:
        return error(400, f"since: {exc.message}", "since")
    try:
        scores = await store_call("read", _service().store.outcomes.scores, version, since)
    except Exception as exc:
        return store_down(exc)
    counts: dict[str, int] = {}
    for score in scores:
        counts[score["model_version"] or "none"] = counts.get(score["model_version"] or "none", 0) + 1
    metrics = await asyncio.to_thread(accuracy_metrics, scores)  # numpy work off the event loop
    return JSONResponse(json_safe({"model_version": version, "since": since.isoformat() if since else None,
                                   "scored_steps": counts, "metrics": metrics}))


routes = [Route("/outcomes", post_outcomes, methods=["POST"]),
          Route("/accuracy", get_accuracy, methods=["GET"])]
