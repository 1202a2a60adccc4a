"""Live accuracy in the store: actual candles (outcomes) matched to the recorded forecasts of the
same ``series_id`` that covered their timestamps, one score row per forecast step.

Both inserts skip rows that exist already (unique series/timestamp and forecast/step), so partial
and repeated arrivals count once; each call also scores forecasts recorded after an earlier
arrival of the same outcome. Only rows inserted by this call are returned (for metrics).
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Optional

import pandas as pd
from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kronos_runtime.quality.metrics import naive_scale
from kronos_runtime.series import ALL_COLUMNS, complete_columns, normalise_columns, numeric_values

from ..requests import _frame
from ..schemas import SingleRequest
from .schema import ForecastRecord, ForecastScore, Outcome


def finite_or_none(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def reference_of(body: SingleRequest) -> dict[str, dict[str, Optional[float]]]:
    """What direction accuracy and MASE need later: the last input row and the in-sample naive
    MAE per column (of the rows the forecast used)."""
    raw = complete_columns(numeric_values(normalise_columns(_frame(body))))
    if body.lookback:
        raw = raw[-body.lookback:]
    return {"last": {name: finite_or_none(raw[-1, c]) for c, name in enumerate(ALL_COLUMNS)},
            "scale": {name: finite_or_none(naive_scale(raw[:, c])) for c, name in enumerate(ALL_COLUMNS)}}


def live_fields(body: SingleRequest, result: dict[str, Any]) -> dict[str, Any]:
    """The record columns live accuracy needs (empty values without a series id or a result)."""
    if not body.series_id or not result:
        return {"series_id": body.series_id, "forecast_start": None, "forecast_end": None,
                "reference": None}
    stamps = [p["timestamp"] for p in result["predictions"]]
    try:
        reference = reference_of(body)
    except ValueError:  # never lose the record over it: direction and MASE are then null
        reference = None
    return {"series_id": body.series_id, "forecast_start": datetime.fromisoformat(stamps[0]),
            "forecast_end": datetime.fromisoformat(stamps[-1]), "reference": reference}


def step_values(record: Any, step: int, actual: dict[str, float]) -> dict[str, Any]:
    """Forecast, actual, quantiles and reference of one step, for the columns the outcome has."""
    predictions = record.predictions
    columns = [c for c in ALL_COLUMNS if c in actual]
    reference = record.reference or {}
    return {"forecast": {c: predictions["mean"][step][c] for c in columns},
            "actual": {c: actual[c] for c in columns},
            "quantiles": {level: {c: rows[step][c] for c in columns}
                          for level, rows in (predictions.get("quantiles") or {}).items()},
            "last": {c: reference.get("last", {}).get(c) for c in columns},
            "scale": {c: reference.get("scale", {}).get(c) for c in columns}}


class OutcomeStore:
    """Outcomes in, scores out; scores read back for ``/v1/accuracy``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert(self, table: Any):
        dialect = postgresql_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        return dialect(table)

    def add(self, series_id: str, timestamps: pd.DatetimeIndex, candles: list[dict[str, float]]
            ) -> dict[str, Any]:
        """Store new outcomes and score every matching forecast step not scored yet."""
        stamps = [t.to_pydatetime() for t in timestamps]
        with self.engine.begin() as connection:
            new = connection.execute(
                self._insert(Outcome).on_conflict_do_nothing(index_elements=["series_id", "timestamp"])
                .returning(Outcome.id),
                [{"series_id": series_id, "timestamp": t, "candle": c}
                 for t, c in zip(stamps, candles)]).all()
            stored = {row.timestamp: row.candle for row in connection.execute(
                select(Outcome.timestamp, Outcome.candle).where(
                    Outcome.series_id == series_id, Outcome.timestamp.in_(stamps)))}
            records = connection.execute(select(
                ForecastRecord.id, ForecastRecord.model_version, ForecastRecord.created_at,
                ForecastRecord.predictions, ForecastRecord.reference).where(
                ForecastRecord.series_id == series_id, ForecastRecord.status == 200,
                ForecastRecord.forecast_start <= max(stamps),
                ForecastRecord.forecast_end >= min(stamps))).all()
            rows = []
            for record in records:
                for step, prediction in enumerate(record.predictions["mean"]):
                    actual = stored.get(datetime.fromisoformat(prediction["timestamp"]))
                    if actual is not None:
                        rows.append({"forecast_id": record.id, "step": step + 1,
                                     "series_id": series_id, "model_version": record.model_version,
                                     "timestamp": datetime.fromisoformat(prediction["timestamp"]),
                                     "forecast_created_at": record.created_at,
                                     "values": step_values(record, step, actual)})
            scored = connection.execute(
                self._insert(ForecastScore).on_conflict_do_nothing(
                    index_elements=["forecast_id", "step"])
                .returning(ForecastScore.model_version, ForecastScore.step, ForecastScore.values),
                rows).all() if rows else []
        return {"new_outcomes": len(new), "forecasts": len(records),
                "scored": [dict(row._mapping) for row in scored]}

    def scores(self, model_version: Optional[str], since: Optional[datetime]
               ) -> list[dict[str, Any]]:
        """Scored steps (model version, step, values), optionally of one version, of forecasts
        made since ``since``."""
        query = select(ForecastScore.model_version, ForecastScore.step, ForecastScore.values)
        if model_version:
            query = query.where(ForecastScore.model_version == model_version)
        if since:
            query = query.where(ForecastScore.forecast_created_at >= since)
        with self.engine.begin() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def delete_before(self, cutoff: datetime) -> None:
        """Retention: scores of forecasts made before ``cutoff`` and outcomes received before it."""
        with self.engine.begin() as connection:
            connection.execute(delete(ForecastScore).where(ForecastScore.forecast_created_at < cutoff))
            connection.execute(delete(Outcome).where(Outcome.received_at < cutoff))
