"""From HTTP bodies to runtime requests (defaults and limits applied) and back to JSON."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kronos_runtime import ForecastRequest, ForecastResult, InputError, SamplingParams
from kronos_runtime.series import ALL_COLUMNS

from .schemas import SingleRequest
from .settings import Settings


def _frame(body: SingleRequest) -> pd.DataFrame:
    if not body.data:
        raise InputError("data", "must hold at least one row")
    columns = [c.strip().lower() for c in body.columns] if body.columns else None
    widths = {len(row) for row in body.data}
    if len(widths) != 1:
        row = next(i for i, r in enumerate(body.data) if len(r) != len(body.data[0]))
        raise InputError("data", f"row {row} has {len(body.data[row])} values, row 0 has "
                                 f"{len(body.data[0])}")
    width = widths.pop()
    if columns is None:
        if width not in (4, 5, 6):
            raise InputError("data", f"rows need 4, 5 or 6 values (open, high, low, close"
                                     f"[, volume, amount]), got {width}; or name them in 'columns'")
        columns = list(ALL_COLUMNS[:width])
    elif len(columns) != width:
        raise InputError("columns", f"names {len(columns)} columns but rows have {width} values")
    return pd.DataFrame(np.asarray(body.data, dtype=np.float64), columns=columns)


def _limit(field: str, value: int, limit: int) -> int:
    if value > limit:
        raise InputError(field, f"{value} exceeds the limit of {limit}")
    return value


def sampling_params(body: Any, settings: Settings, sample_count: int) -> SamplingParams:
    """The sampling fields of a body (a forecast or a backtest), settings' defaults filled in."""
    return SamplingParams(
        temperature=settings.default_temperature if body.temperature is None else body.temperature,
        top_k=settings.default_top_k if body.top_k is None else body.top_k,
        top_p=settings.default_top_p if body.top_p is None else body.top_p,
        sample_count=sample_count, seed=body.seed)


def to_forecast_request(body: SingleRequest, settings: Settings) -> ForecastRequest:
    """Apply defaults and limits; raises InputError naming the field."""
    frame = _frame(body)
    pred_len = body.pred_len if body.pred_len is not None else settings.default_pred_len
    _limit("pred_len", pred_len, settings.max_pred_len)
    if body.lookback is not None:
        _limit("lookback", body.lookback, settings.max_lookback)
    elif len(frame) > settings.max_lookback:
        raise InputError("data", f"{len(frame)} rows exceed the limit of {settings.max_lookback}; "
                                 f"send fewer rows or set 'lookback'")
    sample_count = body.sample_count if body.sample_count is not None else settings.default_sample_count
    _limit("sample_count", sample_count, settings.max_sample_count)
    sampling = sampling_params(body, settings, sample_count)
    return ForecastRequest(data=frame, pred_len=pred_len, timestamps=body.timestamps,
                           future_timestamps=body.future_timestamps, lookback=body.lookback,
                           sampling=sampling, quantiles=body.quantiles or (),
                           calendar=body.calendar, return_samples=bool(body.return_samples))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for timestamp, row in zip(frame.index, frame.to_numpy(dtype=np.float64)):
        record = {"timestamp": timestamp.isoformat()}
        record.update(zip(ALL_COLUMNS, map(float, row)))
        out.append(record)
    return out


def to_response(result: ForecastResult, quantiles_asked: bool, model: str, version: str,
                device: str, request_id: str, calendar: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    body: dict[str, Any] = {"predictions": _records(result.mean)}
    if quantiles_asked:
        body["quantiles"] = {f"{level:g}": _records(frame) for level, frame in result.quantiles.items()}
    if result.samples is not None:
        body["samples"] = {name: result.samples[:, :, i].tolist() for i, name in enumerate(ALL_COLUMNS)}
    if calendar is not None:
        body["calendar"] = calendar
    body.update(model=model, model_version=version, device=device, request_id=request_id,
                seed=result.seed)
    return body
