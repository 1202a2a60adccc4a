"""The forecast engine: continuous (step-level) batching of Kronos forecasts across requests.

- :mod:`.scheduler`: who runs this step (admission, priorities, the per-step chunk budget);
- :mod:`.executor`: the model math (per-series chunks, one batched decode step);
- :mod:`.decode_pass`: one decode position for the batch's rows (shared by both step kinds);
- :mod:`.static_step`: the fixed-shape decode step, replayed from CUDA graphs on a GPU;
- :mod:`.batch`: the persistent decode batch (prefix slots and own caches);
- :mod:`.engine`: the step loop tying them together, and the futures callers wait on.
"""
from .cost import series_cost
from .engine import Engine, StepStats
from .priority import Priority
from .scheduler import EngineLimits
from .sequence import Cancelled

__all__ = ["series_cost", "Cancelled", "Engine", "EngineLimits", "Priority", "StepStats"]
