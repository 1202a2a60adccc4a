"""Which requests may be cached, and under which key (model version + canonical request)."""
from __future__ import annotations

import hashlib
import json

from ..schemas import SingleRequest
from ..settings import Settings

# Fields that choose a variant, not the forecast: the key names the variant's version instead.
ROUTING_FIELDS = {"model_version", "sticky_key"}
# Settings that change a forecast for the same body (defaults it falls back on, numerics).
FORECAST_SETTINGS = ("default_pred_len", "default_temperature", "default_top_k", "default_top_p",
                     "default_sample_count", "dtype", "sliding", "max_context", "cuda_graphs")


def is_deterministic(body: SingleRequest, settings: Settings) -> bool:
    """Greedy (effective top_k 1) or seeded: the same body gives the same forecast."""
    top_k = settings.default_top_k if body.top_k is None else body.top_k
    return body.seed is not None or top_k == 1


def cache_key(body: SingleRequest, model: str, version: str, settings: Settings) -> str:
    """sha256 over the model version, the forecast settings, the device kind and the body."""
    canonical = {
        "model": model, "version": version,
        "device": "cuda" if settings.uses_gpu else "cpu",  # CPU and CUDA random streams differ
        "settings": {name: getattr(settings, name) for name in FORECAST_SETTINGS},
        "body": body.model_dump(exclude=ROUTING_FIELDS),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))  # NaN too: unvalidated yet
    return hashlib.sha256(text.encode()).hexdigest()
