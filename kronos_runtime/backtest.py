"""Rolling-origin backtests: forecast the last ``folds`` windows of each series from the data
before them, and score the forecasts against what happened and against naive baselines.

The plan (:func:`plan_folds`) and the scoring (:func:`backtest_report`) are shared by the CLI and
the service; the forecasts come from :func:`run_backtest` (a forecaster per model version, all
folds as ONE ragged batch each) or, in the service, from the shared forecast path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .forecaster import ForecastRequest, ForecastResult, KronosForecaster
from .quality import column_metrics, naive, seasonal_naive
from .quality.metrics import naive_scale
from .sampling import SamplingParams
from .series import (ALL_COLUMNS, MIN_HISTORY, check_increasing, complete_columns, numeric_values,
                     normalise_columns, to_datetime_index)

BASELINES = ("naive", "seasonal_naive")


@dataclass
class BacktestSpec:
    """What to backtest: ``folds`` windows of ``horizon`` steps, origins ``step`` rows apart."""

    horizon: int
    folds: int = 5
    step: int | None = None          # rows between origins; default: the horizon
    lookback: int = 512              # history rows given to the model per fold
    sampling: SamplingParams = field(default_factory=SamplingParams)
    quantiles: Sequence[float] = ()
    season_period: int | None = None  # seasonal naive period; default from the timestamps

    def validate(self) -> None:
        for name in ("horizon", "folds", "lookback"):
            if getattr(self, name) < (MIN_HISTORY if name == "lookback" else 1):
                raise InputError(name, f"must be at least {MIN_HISTORY if name == 'lookback' else 1}")
        if self.step is not None and self.step < 1:
            raise InputError("step", "must be at least 1")

    @property
    def origin_step(self) -> int:
        return self.step or self.horizon


@dataclass
class Series:
    """One long series: rows [n, 6] in ``ALL_COLUMNS`` order and their timestamps."""

    values: np.ndarray
    timestamps: pd.DatetimeIndex


@dataclass
class Fold:
    """One backtest window: the history before ``origin`` and the ``horizon`` rows after it."""

    series: int
    origin: int                       # rows of history (the index of the first forecast row)
    history: np.ndarray               # [origin, 6]
    history_stamps: pd.DatetimeIndex
    actual: np.ndarray                # [horizon, 6]
    timestamps: pd.DatetimeIndex      # of the forecast rows


@dataclass
class FoldForecast:
    """A model version's forecast of one fold (de-normalised arrays in ``ALL_COLUMNS`` order)."""

    mean: np.ndarray                          # [horizon, 6]
    quantiles: dict[float, np.ndarray]        # level -> [horizon, 6]
    samples: np.ndarray | None                # [paths, horizon, 6]
    seed: int | None = None

    @classmethod
    def from_result(cls, result: ForecastResult) -> "FoldForecast":
        return cls(result.mean.to_numpy(np.float64),
                   {q: frame.to_numpy(np.float64) for q, frame in result.quantiles.items()},
                   result.samples, result.seed)


def load_series(data: pd.DataFrame, timestamps: Sequence | None, field: str = "series") -> Series:
    """Validate one input series (columns as the forecaster accepts them; timestamps required)."""
    values = complete_columns(numeric_values(normalise_columns(data)))
    if not np.isfinite(values).all():
        raise InputError(field, "data holds NaN or infinite values")
    stamps = to_datetime_index(timestamps, f"{field}.timestamps")
    if stamps is None or len(stamps) != len(values):
        raise InputError(f"{field}.timestamps", f"needs one timestamp per row ({len(values)})")
    check_increasing(stamps, f"{field}.timestamps")
    return Series(values, stamps)


def default_season_period(stamps: pd.DatetimeIndex) -> int:
    """5 for weekday daily data, 7 for daily data with weekends, else the usual bars per day."""
    days = stamps.normalize()
    if len(days.unique()) == len(stamps):  # at most one bar a day
        return 7 if (stamps.dayofweek >= 5).any() else 5
    return int(pd.Series(days).value_counts().mode().iloc[0])


def plan_folds(series: Sequence[Series], spec: BacktestSpec) -> list[Fold]:
    """Fold origins per series, oldest first; the last fold ends with the series."""
    spec.validate()
    folds = []
    for i, s in enumerate(series):
        first = len(s.values) - spec.horizon - (spec.folds - 1) * spec.origin_step
        if first < MIN_HISTORY:
            needed = spec.horizon + (spec.folds - 1) * spec.origin_step + MIN_HISTORY
            raise InputError("folds", f"series {i} has {len(s.values)} rows; {spec.folds} folds of "
                                      f"{spec.horizon} steps {spec.origin_step} apart need {needed}")
        for origin in range(first, len(s.values) - spec.horizon + 1, spec.origin_step):
            folds.append(Fold(i, origin, s.values[:origin], s.timestamps[:origin],
                              s.values[origin:origin + spec.horizon],
                              s.timestamps[origin:origin + spec.horizon]))
    return folds


def fold_request(fold: Fold, spec: BacktestSpec) -> ForecastRequest:
    """The runtime request that forecasts ``fold`` (its real timestamps, the last ``lookback`` rows)."""
    return ForecastRequest(
        data=pd.DataFrame(fold.history[-spec.lookback:], columns=list(ALL_COLUMNS)),
        pred_len=spec.horizon, timestamps=fold.history_stamps[-spec.lookback:],
        future_timestamps=fold.timestamps, sampling=spec.sampling, quantiles=spec.quantiles,
        return_samples=spec.sampling.sample_count > 1)


def season_periods(series: Sequence[Series], folds: Sequence[Fold], spec: BacktestSpec) -> list[int]:
    """The seasonal naive period per series: as asked (checked against the shortest fold
    history), else the default from the timestamps, capped at the shortest fold history."""
    periods = []
    for i, s in enumerate(series):
        shortest = min(f.origin for f in folds if f.series == i)
        if spec.season_period and spec.season_period > shortest:
            raise InputError("season_period", f"{spec.season_period} exceeds the {shortest} rows of "
                                              f"history of series {i}'s first fold")
        periods.append(spec.season_period or min(default_season_period(s.timestamps), shortest))
    return periods


def baseline_forecasts(folds: Sequence[Fold], periods: Sequence[int], spec: BacktestSpec
                       ) -> dict[str, list[FoldForecast]]:
    return {"naive": [FoldForecast(naive(f.history, spec.horizon), {}, None) for f in folds],
            "seasonal_naive": [FoldForecast(seasonal_naive(f.history, spec.horizon, periods[f.series]),
                                            {}, None) for f in folds]}


def score(folds: Sequence[Fold], forecasts: Sequence[FoldForecast]) -> dict[str, dict[str, Any]]:
    """Metrics per column, pooled over every fold's points."""
    horizon = len(folds[0].actual)
    actual = np.concatenate([f.actual for f in folds])
    mean = np.concatenate([f.mean for f in forecasts])
    last = np.repeat(np.stack([f.history[-1] for f in folds]), horizon, axis=0)
    scale = np.repeat(np.array([[naive_scale(f.history[:, c]) for c in range(len(ALL_COLUMNS))]
                                for f in folds]), horizon, axis=0)
    levels = sorted(forecasts[0].quantiles)
    with_samples = all(f.samples is not None for f in forecasts)
    out = {}
    for c, name in enumerate(ALL_COLUMNS):
        quantiles = {q: np.concatenate([f.quantiles[q][:, c] for f in forecasts]) for q in levels}
        samples = (np.concatenate([f.samples[:, :, c] for f in forecasts], axis=1)
                   if with_samples else None)
        out[name] = column_metrics(actual[:, c], mean[:, c], last[:, c], scale[:, c],
                                   quantiles or None, samples)
    return out


def columns(values: np.ndarray) -> dict[str, list[float]]:
    return {name: values[:, c].tolist() for c, name in enumerate(ALL_COLUMNS)}


def json_safe(value: Any) -> Any:
    """NaN and infinities (undefined metrics) as null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def backtest_report(folds: Sequence[Fold], series: Sequence[Series], spec: BacktestSpec,
                    forecasts: Mapping[str, Sequence[FoldForecast]]) -> dict[str, Any]:
    """The backtest response: every fold's forecast and actuals, metrics per version and baseline."""
    periods = season_periods(series, folds, spec)
    rows = []
    for version, per_fold in forecasts.items():
        for fold, forecast in zip(folds, per_fold):
            row = {"series": fold.series, "origin": fold.history_stamps[-1].isoformat(),
                   "model_version": version, "seed": forecast.seed,
                   "timestamps": [t.isoformat() for t in fold.timestamps],
                   "forecast": columns(forecast.mean), "actual": columns(fold.actual)}
            if forecast.quantiles:
                row["quantiles"] = {f"{q:g}": columns(v) for q, v in forecast.quantiles.items()}
            rows.append(row)
    metrics = {version: score(folds, per_fold) for version, per_fold in forecasts.items()}
    metrics.update({name: score(folds, per_fold)
                    for name, per_fold in baseline_forecasts(folds, periods, spec).items()})
    return json_safe({"folds": rows, "metrics": metrics,
                      "config": {"horizon": spec.horizon, "folds": spec.folds,
                                 "step": spec.origin_step, "lookback": spec.lookback,
                                 "sample_count": spec.sampling.sample_count,
                                 "quantiles": sorted(spec.quantiles),
                                 "season_periods": periods}})


def run_backtest(forecasters: Mapping[str, KronosForecaster], series: Sequence[Series],
                 spec: BacktestSpec, progress: bool = False) -> dict[str, Any]:
    """Backtest each model version; every version forecasts all folds as one ragged batch."""
    folds = plan_folds(series, spec)
    season_periods(series, folds, spec)  # bad input fails before any forecast
    requests = [fold_request(f, spec) for f in folds]
    forecasts = {version: [FoldForecast.from_result(r)
                           for r in forecaster.forecast(requests, progress=progress)]
                 for version, forecaster in forecasters.items()}
    return backtest_report(folds, series, spec, forecasts)
