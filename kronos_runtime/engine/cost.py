"""What a series costs the engine, in model-token positions, estimated before admission.

Prefill of the window, one position per path per step, the exact-mode window recomputations
(after the window slides, every step recomputes the window: its history part once, its
generated part per path) and the tokenizer (about a tenth of a model position per position).
"""
from __future__ import annotations

TOKENIZER_COST = 0.1  # a tokenizer position costs about a tenth of a model position


def series_cost(length: int, horizon: int, paths: int, max_context: int, exact: bool) -> int:
    """Model-token positions to forecast ``horizon`` steps of ``paths`` paths of one series."""
    window = min(length, max_context)
    cost = window + paths * horizon
    if exact:
        for step in range(max(1, max_context - length + 1), horizon):
            generated = min(step, max_context)
            cost += (max_context - generated) + paths * generated
    tokens_out = paths * min(length + horizon, max_context)
    return int(cost + TOKENIZER_COST * (length + tokens_out))
