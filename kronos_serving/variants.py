"""Which models to serve: resolve settings to model sources, load them, one engine each."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from kronos_runtime import CheckpointError, ForecastRequest, KronosForecaster, SamplingParams
from kronos_runtime.dev_checkpoint import MAX_CONTEXT, write_pair
from kronos_runtime.engine import EngineLimits

from .engine_client import EngineClient, step_recorder
from .metrics import METRICS
from .model_store import ModelSource, import_model, store_source
from .routing import parse_variants
from .settings import Settings
from .tracing import record_engine_spans

log = logging.getLogger("kronos.models")

DEFAULT_HUB_MODEL = "NeoQuasar/Kronos-small"
DEFAULT_HUB_TOKENIZER = "NeoQuasar/Kronos-Tokenizer-base"
DEV_MODEL_NAME = "kronos-dev"
DEV_SHAPE = "small"
FALLBACK_CONTEXT = 512


@dataclass
class Variant:
    """A loaded model variant with its own engine."""

    source: ModelSource
    weight: float
    forecaster: KronosForecaster
    engine: EngineClient
    device: str
    load_seconds: float

    @property
    def version(self) -> str:
        return self.source.version

    @property
    def aliases(self) -> set[str]:
        return {self.source.name, self.source.version}


def directory_source(model: str, tokenizer: str) -> ModelSource:
    """A local directory: ``model/`` + ``tokenizer/`` inside it, or model and tokenizer apart."""
    root = Path(model)
    if (root / "model").is_dir() and (root / "tokenizer").is_dir() and not tokenizer:
        return ModelSource(str(root), "local", root / "model", root / "tokenizer")
    if not tokenizer:
        raise CheckpointError(f"{model}: set KRONOS_TOKENIZER (or use a directory with "
                              f"model/ and tokenizer/ inside)")
    return ModelSource(str(root), "local", root, Path(tokenizer))


def hub_source(settings: Settings, model: str, tokenizer: str) -> ModelSource:
    from kronos_runtime.loading import resolve_checkpoint_dir

    cache = settings.hub_cache_dir or None
    model_dir = resolve_checkpoint_dir(model, settings.model_revision or None, cache)
    tokenizer_dir = resolve_checkpoint_dir(tokenizer, settings.tokenizer_revision or None, cache)
    return ModelSource(model, settings.model_revision or "main", model_dir, tokenizer_dir,
                       metadata={"model_source": model, "tokenizer_source": tokenizer})


def dev_source() -> ModelSource:
    """The newest generated dev checkpoint in the store, importing one if there is none."""
    existing = store_source(DEV_MODEL_NAME)
    if existing is not None and existing.is_dev:
        return existing
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tokenizer_dir = write_pair(Path(tmp), DEV_SHAPE)
        import_model(DEV_MODEL_NAME, str(model_dir), str(tokenizer_dir),
                     max_context=MAX_CONTEXT[DEV_SHAPE],
                     labels={"kind": "dev-checkpoint", "weights": "random"},
                     extra_metadata={"dev_checkpoint": True, "shape": DEV_SHAPE})
    return store_source(DEV_MODEL_NAME)


def resolve_one(settings: Settings, model: str) -> ModelSource:
    stored = store_source(model)
    if stored is not None:
        return stored
    if Path(model).expanduser().exists():
        return directory_source(model, settings.tokenizer)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return hub_source(settings, model, settings.tokenizer or DEFAULT_HUB_TOKENIZER)
    raise CheckpointError(f"model {model!r} is neither a model-store tag, a directory "
                          f"nor a hub id")


def resolve_sources(settings: Settings) -> list[tuple[ModelSource, float]]:
    """The model sources to serve, with traffic weights."""
    if settings.variants:
        return [(resolve_one(settings, tag), weight) for tag, weight in parse_variants(settings.variants)]
    if settings.model:
        return [(resolve_one(settings, settings.model), 1.0)]
    try:
        return [(hub_source(settings, DEFAULT_HUB_MODEL,
                            settings.tokenizer or DEFAULT_HUB_TOKENIZER), 1.0)]
    except CheckpointError as exc:
        if not settings.dev_fallback:
            raise
        log.warning("hub unreachable and no model configured: serving a GENERATED DEV CHECKPOINT "
                    "WITH RANDOM WEIGHTS; forecasts are meaningless",
                    extra={"event": "dev_fallback", "reason": str(exc)})
        return [(dev_source(), 1.0)]


def warm_up(forecaster: KronosForecaster) -> None:
    """One small forecast, so the first real request does not pay for kernel setup.

    Long enough (8 steps) to go through CUDA graph capture on a GPU.
    """
    rows = 32
    close = pd.Series(range(rows), dtype=float) * 0.1 + 100
    frame = pd.DataFrame({"open": close, "high": close + 1, "low": close - 1, "close": close})
    forecaster.forecast([ForecastRequest(frame, 8, sampling=SamplingParams(top_k=1, sample_count=2))])


def load_variant(settings: Settings, source: ModelSource, weight: float) -> Variant:
    """Load one source and start its engine."""
    started = time.perf_counter()
    device = settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"KRONOS_DEVICE={device} but CUDA is not available")
    max_context = settings.max_context or source.max_context or FALLBACK_CONTEXT
    forecaster = KronosForecaster.from_pretrained(source.model_dir, source.tokenizer_dir,
                                                  device=device, dtype=settings.dtype,
                                                  max_context=max_context, sliding=settings.sliding,
                                                  steps_mode=None if settings.cuda_graphs else "eager")
    warm_up(forecaster)
    seconds = time.perf_counter() - started
    version = source.version

    engine = EngineClient(forecaster.engine(engine_limits(settings), on_step=step_recorder(version)),
                          settings.max_queue,
                          on_done=lambda future, context: record_engine_spans(future, context, version))
    METRICS.model_load.labels(model_version=version).observe(seconds)
    METRICS.model_info.labels(model=source.name, version=version, device=device).set(1)
    log.info("model loaded", extra={"event": "model_loaded", "model": source.name,
                                    "model_version": version, "device": device,
                                    "load_seconds": round(seconds, 3), "dev": source.is_dev})
    return Variant(source, weight, forecaster, engine, device, seconds)


def engine_limits(settings: Settings) -> EngineLimits:
    """The engine's bounds from the settings (``max_batch_*`` bound the live series and rows)."""
    return EngineLimits(max_live_series=settings.max_batch_series,
                        max_live_rows=settings.max_batch_rows, chunk_tokens=settings.chunk_tokens,
                        step_tokens=settings.step_tokens, max_recomputing=settings.max_recomputing,
                        short_cost=settings.short_cost, short_step_tokens=settings.short_step_tokens,
                        starvation_s=settings.starvation_s,
                        background_share=settings.background_share,
                        request_level=settings.batching == "request")
