"""What callers hand the runtime (a request per series) and what they get back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .sampling import SamplingParams
from .series import ALL_COLUMNS, PreparedSeries


@dataclass
class ForecastRequest:
    """One series to forecast. ``data`` has open, high, low, close[, volume, amount]."""

    data: pd.DataFrame
    pred_len: int
    timestamps: Sequence | None = None
    future_timestamps: Sequence | None = None
    lookback: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    quantiles: Sequence[float] = ()
    return_samples: bool = False
    calendar: str | None = None  # future timestamps' calendar: auto, 24/7, business_days, XNYS...


@dataclass
class ForecastResult:
    """Mean path (what the reference returns), quantiles and optional raw sample paths."""

    mean: pd.DataFrame                       # index: future timestamps, columns ALL_COLUMNS
    quantiles: dict[float, pd.DataFrame]
    samples: np.ndarray | None               # [paths, pred_len, 6], de-normalised
    seed: int                                # the seed used (reproduces sampled forecasts)
    history_rows: int

    def to_frame(self) -> pd.DataFrame:
        """Mean path plus ``<column>_q<level>`` quantile columns."""
        frame = self.mean.copy()
        for level, q in self.quantiles.items():
            frame = frame.join(q.add_suffix(f"_q{level:g}"))
        return frame


def validate_quantiles(levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(float(q) for q in levels)
    if any(not 0 < q < 1 for q in levels):
        raise InputError("quantiles", "levels must be in (0, 1)")
    return tuple(sorted(set(levels)))


def build_result(prepared: PreparedSeries, request: ForecastRequest, paths: np.ndarray,
                 seed: int) -> ForecastResult:
    """Average the normalised sample paths [paths, H, 6], de-normalise, add quantiles."""
    index = prepared.future_index
    mean = prepared.denormalise(paths.mean(axis=0))
    samples = prepared.denormalise(paths)
    quantiles = {q: pd.DataFrame(np.quantile(samples, q, axis=0), index=index,
                                 columns=list(ALL_COLUMNS))
                 for q in validate_quantiles(request.quantiles)}
    return ForecastResult(mean=pd.DataFrame(mean, index=index, columns=list(ALL_COLUMNS)),
                          quantiles=quantiles, samples=samples if request.return_samples else None,
                          seed=seed, history_rows=prepared.length)
