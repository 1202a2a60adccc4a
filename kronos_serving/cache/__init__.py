"""Repeated-forecast cache: deterministic requests answered again without running the model."""
from .forecasts import ForecastCache, cache_key, is_deterministic

__all__ = ["ForecastCache", "cache_key", "is_deterministic"]
