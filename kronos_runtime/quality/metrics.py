"""Point and probabilistic forecast errors, pooled over every forecast point given.

Inputs are flat arrays aligned point by point (every fold's steps one after another); per-fold
values (the last observed value, the MASE scale) are repeated for each of the fold's points.
Undefined results (no usable point, zero scale) are NaN.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def mae(actual: np.ndarray, forecast: np.ndarray) -> float:
    return _mean(np.abs(np.asarray(actual) - forecast))


def rmse(actual: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.sqrt(_mean((np.asarray(actual) - forecast) ** 2)))


def mape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Mean absolute percentage error (in %), over points whose actual is not 0."""
    actual = np.asarray(actual, dtype=np.float64)
    keep = actual != 0
    return 100 * _mean(np.abs(actual[keep] - np.asarray(forecast)[keep]) / np.abs(actual[keep]))


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE (in %, 0 to 200): 2|a - f| / (|a| + |f|), over points where both are not 0."""
    actual, forecast = np.asarray(actual, dtype=np.float64), np.asarray(forecast, dtype=np.float64)
    denominator = np.abs(actual) + np.abs(forecast)
    keep = denominator != 0
    return 100 * _mean(2 * np.abs(actual[keep] - forecast[keep]) / denominator[keep])


def naive_scale(history: np.ndarray, period: int = 1) -> float:
    """In-sample MAE of the (seasonal) naive forecast: the MASE denominator."""
    history = np.asarray(history, dtype=np.float64)
    if len(history) <= period:
        return float("nan")
    return float(np.mean(np.abs(history[period:] - history[:-period])))


def mase(actual: np.ndarray, forecast: np.ndarray, scale: np.ndarray | float) -> float:
    """Mean absolute error scaled by the in-sample naive MAE (``naive_scale``) of each point's fold."""
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), np.shape(actual))
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.abs(np.asarray(actual) - forecast) / np.where(scale > 0, scale, np.nan)
    return _mean(scaled)


def direction_accuracy(actual: np.ndarray, forecast: np.ndarray, last: np.ndarray | float) -> float:
    """Share of points where the forecast moves the same way from the last observed value as the
    actual does (up, down or flat). A flat forecast (the naive one) only matches flat actuals."""
    last = np.asarray(last, dtype=np.float64)
    return _mean(np.sign(np.asarray(forecast) - last) == np.sign(np.asarray(actual) - last))


def coverage(actual: np.ndarray, bound: np.ndarray) -> float:
    """Share of actuals at or below the forecast quantile (a calibrated q-quantile gives q)."""
    return _mean(np.asarray(actual) <= bound)


def interval_coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of actuals inside [lower, upper]."""
    actual = np.asarray(actual)
    return _mean((actual >= lower) & (actual <= upper))


def pinball_loss(actual: np.ndarray, quantiles: Mapping[float, np.ndarray]) -> float:
    """Pinball (quantile) loss averaged over the levels: max(q (a - f), (q - 1)(a - f))."""
    losses = []
    for level, bound in quantiles.items():
        error = np.asarray(actual, dtype=np.float64) - bound
        losses.append(_mean(np.maximum(level * error, (level - 1) * error)))
    return float(np.mean(losses)) if losses else float("nan")


def crps_from_samples(actual: np.ndarray, samples: np.ndarray) -> float:
    """CRPS of the empirical distribution of ``samples`` [paths, points]: E|X - a| - E|X - X'| / 2.

    The pairwise term uses the sorted-samples identity (O(paths log paths) per point).
    """
    samples = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    paths = samples.shape[0]
    spread_to_actual = np.mean(np.abs(samples - np.asarray(actual)), axis=0)
    weights = (2 * np.arange(1, paths + 1) - paths - 1)[:, None]
    mean_pair_distance = 2 * np.sum(weights * samples, axis=0) / paths ** 2
    return _mean(spread_to_actual - mean_pair_distance / 2)


def column_metrics(actual: np.ndarray, forecast: np.ndarray, last: np.ndarray, scale: np.ndarray,
                   quantiles: Mapping[float, np.ndarray] | None = None,
                   samples: np.ndarray | None = None) -> dict[str, object]:
    """Every metric for one column; probabilistic ones only when quantiles / samples are given."""
    result: dict[str, object] = {
        "count": int(np.size(actual)), "mae": mae(actual, forecast), "rmse": rmse(actual, forecast),
        "mape": mape(actual, forecast), "smape": smape(actual, forecast),
        "mase": mase(actual, forecast, scale),
        "direction_accuracy": direction_accuracy(actual, forecast, last)}
    if quantiles:
        levels = sorted(quantiles)
        result["coverage"] = {f"{q:g}": coverage(actual, quantiles[q]) for q in levels}
        result["pinball_loss"] = pinball_loss(actual, quantiles)
        if len(levels) >= 2:
            result["interval"] = [levels[0], levels[-1]]
            result["interval_coverage"] = interval_coverage(actual, quantiles[levels[0]],
                                                            quantiles[levels[-1]])
    if samples is not None:
        result["crps"] = crps_from_samples(actual, samples)
    return result
