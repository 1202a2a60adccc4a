"""What a series costs the engine, in model-token positions, estimated before admission.

Prefill of the window, one position per path per step, the exact-mode window recomputations
(after the window slides, every step recomputes the window: its history part once, its
generated part per path) and the tokenizer (about a tenth of a model position per position).
The same estimate, from a series' progress, tells what is left of it.
"""
from __future__ import annotations

TOKENIZER_COST = 0.1  # a tokenizer position costs about a tenth of a model position


def _sum_min(start: int, stop: int, cap: int) -> int:
    """Sum of min(k, cap) for k in [start, stop)."""
    if stop <= start:
        return 0
    below = min(stop, cap + 1)  # k <= cap: min(k, cap) = k
    total = (start + below - 1) * (below - start) // 2 if below > start else 0
    return total + cap * (stop - max(start, cap + 1)) if stop > cap + 1 else total


def series_cost(length: int, horizon: int, paths: int, max_context: int, exact: bool,
                steps_done: int = 0, prefilled: int = 0) -> int:
    """Model-token positions to forecast ``horizon`` steps of ``paths`` paths of one series;
    with ``steps_done`` and ``prefilled``, the positions still to run."""
    window = min(length, max_context)
    cost = (window - prefilled) + paths * (horizon - steps_done)
    if exact:
        # sampling step k recomputes the window once it slid (length + k > max_context):
        # its history part (max_context - g, once) and its generated part (g per path)
        first = max(1, max_context - length + 1, steps_done)
        steps = max(0, horizon - first)
        cost += steps * max_context + (paths - 1) * _sum_min(first, horizon, max_context)
    encoded = prefilled or steps_done
    tokens_out = paths * min(length + horizon, max_context)
    return int(cost + TOKENIZER_COST * ((0 if encoded else length) + tokens_out))
