"""Input handling: columns, validation, normalisation and time features, as the reference does."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .calendars import GIVEN, CalendarRule, continue_timestamps
from .errors import InputError

PRICE_COLUMNS = ("open", "high", "low", "close")
ALL_COLUMNS = PRICE_COLUMNS + ("volume", "amount")
TIME_FEATURES = ("minute", "hour", "weekday", "day", "month")
CLIP = 5.0
STD_EPS = 1e-5
MAX_ABS_VALUE = 1e15  # past this a price, volume or amount is a unit or parsing error
MIN_HISTORY = 2
DEFAULT_START = pd.Timestamp("2000-01-03")  # a Monday: anchors synthesized timestamps


@dataclass
class PreparedSeries:
    """A validated, normalised series ready for the forecaster."""

    values: np.ndarray          # [T, 6] normalised and clipped, float32
    mean: np.ndarray            # [6] float32
    std: np.ndarray             # [6] float32
    history_stamps: np.ndarray  # [T, 5] float32 time features
    future_stamps: np.ndarray   # [H, 5]
    future_index: pd.DatetimeIndex
    history_start: pd.Timestamp
    history_end: pd.Timestamp
    calendar: CalendarRule = GIVEN  # how future_index was made (see calendars.py)

    @property
    def length(self) -> int:
        return self.values.shape[0]

    @property
    def horizon(self) -> int:
        return self.future_stamps.shape[0]

    def denormalise(self, values: np.ndarray) -> np.ndarray:
        return values * (self.std + STD_EPS) + self.mean


def time_features(index: pd.DatetimeIndex) -> np.ndarray:
    """Minute, hour, weekday (Mon=0), day and month of each timestamp, float32 [n, 5].

    Computed on the datetime64 values with numpy (what pandas' accessors give, without their
    per-accessor overhead); floor division keeps dates before 1970 right.
    """
    stamps = index.values  # datetime64 in the index's own unit (no cast that could overflow)
    minutes = stamps.astype("datetime64[m]").astype(np.int64)
    days = stamps.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    return np.stack([minutes % 60, minutes // 60 % 24, (days.astype(np.int64) + 3) % 7,
                     (days - months).astype(np.int64) + 1, months.astype(np.int64) % 12 + 1],
                    axis=1).astype(np.float32)


def normalise_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Lower-case column names and reject unknown or missing ones."""
    renamed = frame.rename(columns=lambda c: str(c).strip().lower())
    unknown = [c for c in renamed.columns if c not in ALL_COLUMNS]
    if unknown:
        raise InputError("columns", f"unknown columns {unknown}; expected {list(ALL_COLUMNS)}")
    if renamed.columns.duplicated().any():
        raise InputError("columns", "duplicate column names")
    missing = [c for c in PRICE_COLUMNS if c not in renamed.columns]
    if missing:
        raise InputError("columns", f"missing price columns {missing}")
    if "amount" in renamed.columns and "volume" not in renamed.columns:
        raise InputError("columns", "'amount' given without 'volume'")
    return renamed


def numeric_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as float64; non-numeric columns are parsed (strings of numbers) or rejected."""
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes):
        return frame.astype(np.float64)  # the usual case: no per-column parsing
    try:
        return frame.apply(lambda column: pd.to_numeric(column, errors="raise")).astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise InputError("data", "values must be numbers") from exc


def complete_columns(frame: pd.DataFrame) -> np.ndarray:
    """Rows [n, 6] in ``ALL_COLUMNS`` order, volume/amount added as the reference does:
    no volume -> both 0; no amount -> volume * mean price."""
    values = frame.to_numpy(np.float64)
    column = {name: values[:, i] for i, name in enumerate(frame.columns)}
    prices = np.stack([column[name] for name in PRICE_COLUMNS], axis=1)
    zeros = np.zeros(len(values))
    volume = column.get("volume", zeros)
    if "amount" in column:
        amount = column["amount"]
    else:
        amount = volume * prices.mean(axis=1) if "volume" in column else zeros
    return np.column_stack([prices, volume, amount])


def to_datetime_index(values: Sequence | pd.Index | None, field: str) -> pd.DatetimeIndex | None:
    if values is None:
        return None
    if len(values) and all(isinstance(v, (int, float, np.integer, np.floating))
                           and not isinstance(v, bool) for v in values):
        raise InputError(field, "timestamps must be ISO-8601 strings or datetimes, not numbers")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "could not infer format"
            index = pd.DatetimeIndex(pd.to_datetime(list(values)))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(field, f"cannot parse timestamps ({type(exc).__name__})") from exc
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        raise InputError(field, "timestamps contain missing values")
    return index


def check_values(raw: np.ndarray) -> None:
    """Reject absurd magnitudes and candles whose high is below their low."""
    huge = np.abs(raw) > MAX_ABS_VALUE
    if huge.any():
        row, col = map(int, np.argwhere(huge)[0])
        raise InputError("data", f"row {row} column '{ALL_COLUMNS[col]}' exceeds {MAX_ABS_VALUE:g} "
                                 "in magnitude")
    inverted = raw[:, 1] < raw[:, 2]
    if inverted.any():
        raise InputError("data", f"row {int(np.argmax(inverted))}: high is below low")


def check_increasing(index: pd.DatetimeIndex, field: str) -> None:
    if len(index) > 1 and not (np.diff(index.asi8) > 0).all():
        position = int(np.argmax(np.diff(index.asi8) <= 0)) + 1
        raise InputError(field, f"timestamps must be strictly increasing (position {position})")


def continue_index(index: pd.DatetimeIndex, periods: int, calendar: str | None = None
                   ) -> pd.DatetimeIndex:
    """``periods`` timestamps after ``index`` following its calendar (see calendars.py)."""
    return continue_timestamps(index, periods, calendar)[0]


def prepare_series(data: pd.DataFrame, pred_len: int, timestamps: Sequence | None = None,
                   future_timestamps: Sequence | None = None, lookback: int | None = None,
                   default_freq: str = "1D", calendar: str | None = None) -> PreparedSeries:
    """Validate and normalise one series exactly as the reference predictor does."""
    if not isinstance(pred_len, (int, np.integer)) or isinstance(pred_len, bool) or pred_len < 1:
        raise InputError("pred_len", "must be a positive integer")
    raw = complete_columns(numeric_values(normalise_columns(data)))
    history = to_datetime_index(timestamps, "timestamps")
    if history is not None and len(history) != len(raw):
        raise InputError("timestamps", f"has {len(history)} entries for {len(raw)} rows")
    if lookback is not None:
        if lookback < MIN_HISTORY:
            raise InputError("lookback", f"must be at least {MIN_HISTORY}")
        raw = raw[-lookback:]
        history = history[-lookback:] if history is not None else None
    if len(raw) < MIN_HISTORY:
        raise InputError("data", f"needs at least {MIN_HISTORY} rows, got {len(raw)}")
    bad = ~np.isfinite(raw)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise InputError("data", f"row {row} column '{ALL_COLUMNS[col]}' is NaN or infinite")
    check_values(raw)
    if history is None:
        history = pd.date_range(start=DEFAULT_START, periods=len(raw), freq=default_freq)
        calendar = calendar or "24/7"  # synthesized stamps: keep their step, infer nothing
    check_increasing(history, "timestamps")
    rule = GIVEN

    future = to_datetime_index(future_timestamps, "future_timestamps")
    if future is None:
        try:
            future, rule = continue_timestamps(history, pred_len, calendar)
        except InputError:
            raise
        except (OverflowError, ValueError) as exc:  # pandas timestamps end in 2262
            raise InputError("timestamps", "forecast timestamps would run past the supported "
                                           f"range ({pd.Timestamp.max.date()})") from exc
    elif len(future) != pred_len:
        raise InputError("future_timestamps", f"has {len(future)} entries, pred_len is {pred_len}")
    else:
        check_increasing(future, "future_timestamps")
        if future[0] <= history[-1]:
            raise InputError("future_timestamps", "must start after the last input timestamp")

    values = raw.astype(np.float32)
    mean, std = np.mean(values, axis=0), np.std(values, axis=0)
    normalised = np.clip((values - mean) / (std + STD_EPS), -CLIP, CLIP)
    return PreparedSeries(values=normalised.astype(np.float32), mean=mean, std=std,
                          history_stamps=time_features(history), future_stamps=time_features(future),
                          future_index=future, history_start=history[0], history_end=history[-1],
                          calendar=rule)
