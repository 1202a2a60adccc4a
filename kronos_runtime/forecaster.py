"""The forecaster: requests in, forecasts (mean path, quantiles, sample paths) out."""
from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .errors import InputError
from .generation import SeriesTokens, SlidingMode, StepMode, generate, pad_stack
from .loading import load_model, load_tokenizer, release_freed_memory
from .model import KronosModel
from .sampling import RowSampler, SamplingParams
from .series import ALL_COLUMNS, PreparedSeries, prepare_series
from .tokenizer import KronosTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


class KronosForecaster:
    """Forecasts batches of series with a Kronos model and tokenizer."""

    def __init__(self, model: KronosModel, tokenizer: KronosTokenizer, max_context: int = 512,
                 sliding: SlidingMode = "exact", default_freq: str = "1D",
                 steps_mode: StepMode | None = None) -> None:
        if sliding not in ("exact", "approximate"):
            raise ValueError("sliding must be 'exact' or 'approximate'")
        if steps_mode not in (None, "eager", "static", "graphs"):
            raise ValueError("steps_mode must be 'eager', 'static' or 'graphs'")
        if steps_mode == "graphs" and model.device.type != "cuda":
            raise ValueError("steps_mode 'graphs' needs a CUDA device")
        self.model, self.tokenizer = model.eval(), tokenizer.eval()
        self.max_context = max_context
        self.sliding: SlidingMode = sliding
        self.default_freq = default_freq
        self.device = model.device
        # Decode steps from CUDA graphs on a GPU (launch-bound there); eager on the CPU.
        self.steps_mode: StepMode = steps_mode or ("graphs" if self.device.type == "cuda" else "eager")

    @classmethod
    def from_pretrained(cls, model: str | Path, tokenizer: str | Path, device: str = "cpu",
                        dtype: str = "float32", max_context: int = 512,
                        revision: str | None = None, tokenizer_revision: str | None = None,
                        cache_dir: str | Path | None = None, **kwargs) -> "KronosForecaster":
        """Load a model and tokenizer from local directories or hub ids."""
        forecaster = cls(load_model(model, device, DTYPES[dtype], revision, cache_dir),
                         load_tokenizer(tokenizer, device, tokenizer_revision, cache_dir),
                         max_context=max_context, **kwargs)
        release_freed_memory()
        return forecaster

    def prepare(self, request: ForecastRequest) -> PreparedSeries:
        """Validate one request (raises :class:`InputError` naming the field)."""
        request.sampling.validate()
        validate_quantiles(request.quantiles)
        return prepare_series(request.data, request.pred_len, request.timestamps,
                              request.future_timestamps, request.lookback, self.default_freq,
                              request.calendar)

    def forecast(self, requests: Sequence[ForecastRequest], progress: bool = False
                 ) -> list[ForecastResult]:
        """Forecast a ragged batch: series may differ in length, horizon and sampling."""
        prepared = [self.prepare(r) for r in requests]
        return self.forecast_prepared(prepared, requests, progress)

    @torch.inference_mode()
    def forecast_prepared(self, prepared: Sequence[PreparedSeries],
                          requests: Sequence[ForecastRequest], progress: bool = False
                          ) -> list[ForecastResult]:
        """Forecast already-validated series (see :meth:`prepare`)."""
        if not prepared:
            return []
        seeds = [r.sampling.seed if r.sampling.seed is not None else secrets.randbits(63)
                 for r in requests]
        paths = self._sample_paths(prepared, requests, seeds, progress)
        return [self._result(p, r, s, seed) for p, r, s, seed in zip(prepared, requests, paths, seeds)]

    def _sample_paths(self, prepared: Sequence[PreparedSeries], requests: Sequence[ForecastRequest],
                      seeds: list[int], progress: bool) -> list[np.ndarray]:
        """Normalised sample paths [paths, pred_len, 6] per series."""
        device = self.device
        values = pad_stack([torch.from_numpy(p.values) for p in prepared]).to(device)
        s1_all, s2_all = self.tokenizer.encode(values)
        params = [r.sampling for r in requests]
        series = [SeriesTokens(s1=s1_all[i, :p.length], s2=s2_all[i, :p.length],
                               stamps=torch.from_numpy(p.history_stamps).to(device),
                               future_stamps=torch.from_numpy(p.future_stamps).to(device),
                               paths=params[i].sample_count)
                  for i, p in enumerate(prepared)]
        row_series = [i for i, s in enumerate(series) for _ in range(s.paths)]
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        sampler = RowSampler(params, row_series, generators, device)
        steps = max(s.horizon for s in series)
        with tqdm(total=steps, disable=not progress, file=sys.stderr, desc="forecast",
                  unit="step") as bar:
            gen_s1, gen_s2 = generate(self.model, series, sampler, row_series, self.max_context,
                                      self.sliding, on_step=bar.update if progress else None,
                                      steps_mode=self.steps_mode)
        decoded = self._decode(series, row_series, gen_s1, gen_s2)
        out, start = [], 0
        for s in series:
            out.append(decoded[start:start + s.paths, :s.horizon])
            start += s.paths
        return out

    def _decode(self, series: list[SeriesTokens], row_series: list[int], gen_s1: torch.Tensor,
                gen_s2: torch.Tensor) -> np.ndarray:
        """Decode each row's last ``max_context`` tokens; returns [rows, max_horizon, 6]."""
        s1_rows, s2_rows, horizons = [], [], []
        for row, b in enumerate(row_series):
            s, h = series[b], series[b].horizon
            s1_rows.append(torch.cat([s.s1, gen_s1[row, :h]])[-self.max_context:])
            s2_rows.append(torch.cat([s.s2, gen_s2[row, :h]])[-self.max_context:])
            horizons.append(h)
        decoded = self.tokenizer.decode(pad_stack(s1_rows), pad_stack(s2_rows)).float().cpu()
        out = np.zeros((len(row_series), max(horizons), decoded.shape[-1]), dtype=np.float32)
        for row, (tokens, h) in enumerate(zip(s1_rows, horizons)):
            end = tokens.shape[0]
            out[row, :h] = decoded[row, end - h:end].numpy()
        return out

    @staticmethod
    def _result(prepared: PreparedSeries, request: ForecastRequest, paths: np.ndarray,
                seed: int) -> ForecastResult:
        index = prepared.future_index
        mean = prepared.denormalise(paths.mean(axis=0))
        samples = prepared.denormalise(paths)
        quantiles = {q: pd.DataFrame(np.quantile(samples, q, axis=0), index=index,
                                     columns=list(ALL_COLUMNS))
                     for q in validate_quantiles(request.quantiles)}
        return ForecastResult(mean=pd.DataFrame(mean, index=index, columns=list(ALL_COLUMNS)),
                              quantiles=quantiles,
                              samples=samples if request.return_samples else None,
                              seed=seed, history_rows=prepared.length)
