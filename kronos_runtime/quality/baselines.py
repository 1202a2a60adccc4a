"""Naive baselines a forecast must beat: the last value, and the value one season ago."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def naive(history: np.ndarray, horizon: int) -> np.ndarray:
    """The last observed row repeated ``horizon`` times: [horizon, columns]."""
    return np.repeat(np.asarray(history)[-1:], horizon, axis=0)


def seasonal_naive(history: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """Each step takes the value one ``period`` earlier: step h is ``history[-period + h % period]``."""
    history = np.asarray(history)
    if period < 1:
        raise InputError("season_period", "must be at least 1")
    if period > len(history):
        raise InputError("season_period", f"{period} exceeds the {len(history)} rows of history")
    season = history[-period:]
    return season[np.arange(horizon) % period]
