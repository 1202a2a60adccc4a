"""The forecast engine: continuous (step-level) batching of Kronos forecasts across requests."""
from .priority import Priority

__all__ = ["Priority"]
