"""The forecaster: requests in, forecasts (mean path, quantiles, sample paths) out.

Every forecast runs through the continuous-batching :class:`~kronos_runtime.engine.Engine`;
:meth:`KronosForecaster.forecast` runs one to completion in the caller's thread.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from .engine import Engine, EngineLimits, Priority
from .engine.executor import SlidingMode, StepMode
from .forecast_types import ForecastRequest, ForecastResult, validate_quantiles
from .loading import load_model, load_tokenizer, release_freed_memory
from .model import KronosModel
from .series import PreparedSeries, prepare_series
from .tokenizer import KronosTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
__all__ = ["DTYPES", "ForecastRequest", "ForecastResult", "KronosForecaster", "validate_quantiles"]


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

    def engine(self, limits: EngineLimits | None = None, on_step=None) -> Engine:
        """A new engine over this model (the service starts one per model variant)."""
        return Engine(self.model, self.tokenizer, self.max_context, self.sliding, limits, on_step,
                      self.steps_mode)

    def forecast(self, requests: Sequence[ForecastRequest], progress: bool = False
                 ) -> list[ForecastResult]:
        """Forecast a ragged batch: series may differ in length, horizon and sampling."""
        prepared = [self.prepare(r) for r in requests]
        return self.forecast_prepared(prepared, requests, progress)

    def forecast_prepared(self, prepared: Sequence[PreparedSeries],
                          requests: Sequence[ForecastRequest], progress: bool = False
                          ) -> list[ForecastResult]:
        """Forecast already-validated series (see :meth:`prepare`) in this thread."""
        if not prepared:
            return []
        engine = self.engine(EngineLimits(max_live_series=max(64, len(prepared)),
                                          max_live_rows=max(256, sum(r.sampling.sample_count
                                                                     for r in requests))))
        futures = [engine.submit(r, p, Priority.INTERACTIVE) for p, r in zip(prepared, requests)]
        with tqdm(total=len(futures), disable=not progress, file=sys.stderr, desc="forecast",
                  unit="series") as bar:
            engine.run_until_idle(lambda stats: bar.update(len(stats.completed)))
        return [f.result() for f in futures]
