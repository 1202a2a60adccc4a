"""Autoregressive token generation for ragged batches of series and sample paths.

Each series' window is prefilled once; its sample paths attend to that shared prefix (read once
per series, never copied per path) plus their own cached generated tokens. While a row's
sequence fits in ``max_context`` each step is one new position, exactly what the reference
recomputes. Once the window slides every hidden state changes: ``exact`` mode recomputes the
window (the history part once per series, the generated part per path), ``approximate`` mode
keeps the caches and masks out keys older than the window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .layers import RowGroups
from .model import KronosModel, OwnCache, SharedPrefix, window_masks
from .sampling import RowSampler
from .static_steps import MIN_GRAPHED_STEPS, StaticSteps

SlidingMode = Literal["exact", "approximate"]
StepMode = Literal["eager", "static", "graphs"]  # static: fixed shapes run eagerly (tests)


@dataclass
class SeriesTokens:
    """One series' history tokens and time features, and what to generate for it."""

    s1: torch.Tensor             # [T] history token ids
    s2: torch.Tensor             # [T]
    stamps: torch.Tensor         # [T, 5] history time features
    future_stamps: torch.Tensor  # [H, 5]
    paths: int

    @property
    def length(self) -> int:
        return self.s1.shape[0]

    @property
    def horizon(self) -> int:
        return self.future_stamps.shape[0]


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad tensors [len_i, ...] with zeros to [n, max_len, ...]."""
    longest = max(t.shape[0] for t in tensors)
    return torch.stack([F.pad(t, (0, 0) * (t.dim() - 1) + (0, longest - t.shape[0]))
                        for t in tensors])


def local_groups(rows: list[int], row_series: list[int], device: torch.device
                 ) -> tuple[list[int], RowGroups]:
    """The series of ``rows`` (in order) and the rows' grouping by local series index."""
    series = list(dict.fromkeys(row_series[r] for r in rows))
    local = {b: i for i, b in enumerate(series)}
    return series, RowGroups([local[row_series[r]] for r in rows], device)


class _Generation:
    """State shared by the cached and recomputed row groups."""

    def __init__(self, model: KronosModel, series: list[SeriesTokens], row_series: list[int],
                 max_context: int, sliding: SlidingMode) -> None:
        self.model, self.series, self.row_series = model, series, row_series
        self.max_context, self.sliding = max_context, sliding
        # approximate mode hides cached keys older than the window; exact mode recomputes instead
        self.window_limit = max_context if sliding == "approximate" else None
        self.device = model.device
        steps = max(s.horizon for s in series)
        self.gen_s1 = torch.zeros(len(row_series), steps, dtype=torch.long, device=self.device)
        self.gen_s2 = torch.zeros_like(self.gen_s1)
        self.future = pad_stack([s.future_stamps for s in series])

    def fed(self, rows: list[int], start: int, end: int):
        """Generated tokens [start, end) of ``rows`` and their time features."""
        index = torch.tensor(rows, device=self.device)
        series = torch.tensor([self.row_series[r] for r in rows], device=self.device)
        return (self.gen_s1[index, start:end], self.gen_s2[index, start:end],
                self.future[series, start:end])


class _CachedRows:
    """Rows fed one position per step: shared prefix + own KV cache."""

    def __init__(self, run: _Generation, rows: list[int], prefix: SharedPrefix, capacity: int) -> None:
        self.run, self.rows = run, rows
        self.series, self.groups = local_groups(rows, run.row_series, run.device)
        self.prefix = prefix
        self.own = OwnCache.allocate(run.model, len(rows), capacity, run.device,
                                     prefix.layers[0][0].dtype)

    def keep(self, rows: list[int]) -> None:
        if rows == self.rows:
            return
        where = {r: i for i, r in enumerate(self.rows)}
        self.own.keep(torch.tensor([where[r] for r in rows], dtype=torch.long, device=self.run.device))
        series, self.groups = local_groups(rows, self.run.row_series, self.run.device)
        where_series = {b: i for i, b in enumerate(self.series)}
        self.prefix = self.prefix.keep(torch.tensor([where_series[b] for b in series],
                                                    dtype=torch.long, device=self.run.device))
        self.rows, self.series = rows, series

    def s1_logits(self, step: int) -> torch.Tensor:
        run = self.run
        s1, s2, stamps = run.fed(self.rows, step - 1, step)
        prefix_len = self.prefix.lengths[self.groups.series]
        positions = (prefix_len + (step - 1))[:, None]
        self.prefix_mask, self.own_mask = window_masks(
            prefix_len, positions, self.prefix.layers[0][0].shape[2],
            torch.arange(step, device=run.device), run.window_limit)
        states, self.own_context = run.model.extend(s1, s2, stamps, positions, self.prefix,
                                                    self.prefix_mask, self.own, self.own_mask,
                                                    self.groups)
        self.state = states[:, -1]
        return run.model.s1_logits(self.state)

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        return self.run.model.s2_logits(self.state, s1, self.prefix, self.prefix_mask,
                                        self.own_context, self.own_mask, self.groups)


class _RecomputedRows:
    """Rows whose window slid (exact mode): the window is recomputed at every step.

    The window's history part is the same for all paths of a series: it is prefilled once
    per series, and each path's generated part attends to it as a shared prefix.
    """

    def __init__(self, run: _Generation) -> None:
        self.run = run
        self.rows: list[int] = []

    def s1_logits(self, step: int) -> torch.Tensor:
        run, model, context = self.run, self.run.model, self.run.max_context
        series, self.groups = local_groups(self.rows, run.row_series, run.device)
        generated = min(step, context)
        history = context - generated
        self.prefix = None
        if history:
            tokens = [run.series[b] for b in series]
            window = [slice(s.length - history, s.length) for s in tokens]
            states, layers = model.prefill(torch.stack([s.s1[w] for s, w in zip(tokens, window)]),
                                           torch.stack([s.s2[w] for s, w in zip(tokens, window)]),
                                           torch.stack([s.stamps[w] for s, w in zip(tokens, window)]))
            lengths = torch.full((len(series),), history, device=run.device)
            self.prefix = SharedPrefix.from_prefill(model, states, layers, lengths)
        s1, s2, stamps = run.fed(self.rows, step - generated, step)
        positions = history + torch.arange(generated, device=run.device)[None].expand(len(self.rows), -1)
        causal = torch.ones(generated, generated, dtype=torch.bool, device=run.device).tril()
        states, self.own_context = model.extend(s1, s2, stamps, positions, self.prefix, None,
                                                OwnCache.chunk(model), causal, self.groups)
        self.state = states[:, -1]
        return model.s1_logits(self.state)

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        return self.run.model.s2_logits(self.state, s1, self.prefix, None, self.own_context, None,
                                        self.groups)


def static_until(series: list[SeriesTokens], max_context: int, sliding: SlidingMode) -> int:
    """First step at which some row's window slides in exact mode (all steps if none does)."""
    steps = max(s.horizon for s in series)
    if sliding == "approximate":
        return steps
    return max(1, min(steps, min(max_context - s.length + 1 for s in series)))


@torch.inference_mode()
def generate(model: KronosModel, series: list[SeriesTokens], sampler: RowSampler,
             row_series: list[int], max_context: int, sliding: SlidingMode = "exact",
             on_step: Callable[[], None] | None = None, steps_mode: StepMode = "eager"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``horizon`` token pairs for every row (sample path); rows are series-major.

    Returns s1 and s2 ids [rows, max_horizon]; entries past a series' horizon are unused.
    ``steps_mode`` "graphs" (CUDA only) replays the cached steps from CUDA graphs, "static"
    runs the same fixed-shape steps eagerly; both hand over to eager steps once a window slides
    in exact mode.
    """
    run = _Generation(model, series, row_series, max_context, sliding)
    device, steps = run.device, run.gen_s1.shape[1]
    model.rope.reserve(max_context + steps, device, model.dtype)
    lengths = [s.length for s in series]
    horizons = [s.horizon for s in series]
    all_rows = list(range(len(row_series)))

    # Step 0: prefill each series' window once, shared by all of its paths.
    windows = [slice(max(0, s.length - max_context), None) for s in series]
    states, layers = model.prefill(pad_stack([s.s1[w] for s, w in zip(series, windows)]),
                                   pad_stack([s.s2[w] for s, w in zip(series, windows)]),
                                   pad_stack([s.stamps[w] for s, w in zip(series, windows)]))
    window_len = torch.tensor([min(n, max_context) for n in lengths], device=device)
    prefix = SharedPrefix.from_prefill(model, states, layers, window_len)
    groups = RowGroups(row_series, device)
    last = states[torch.arange(len(series), device=device), window_len - 1][groups.series]
    prefix_mask = (torch.arange(states.shape[1], device=device)[None] < window_len[:, None])[groups.series]
    s1 = sampler(model.s1_logits(last), all_rows)
    ctx = prefix.context[0]
    no_context = ctx.new_zeros(len(all_rows), ctx.shape[1], 0, ctx.shape[3])
    s2 = sampler(model.s2_logits(last, s1, prefix, prefix_mask, (no_context, no_context), None, groups),
                 all_rows)
    run.gen_s1[:, 0], run.gen_s2[:, 0] = s1, s2
    if on_step:
        on_step()
    if steps == 1:
        return run.gen_s1, run.gen_s2

    cached = _CachedRows(run, all_rows, prefix, capacity=steps - 1)
    first_eager = 1
    until = static_until(series, max_context, sliding)
    if steps_mode == "static" or (steps_mode == "graphs" and until - 1 >= MIN_GRAPHED_STEPS):
        StaticSteps(cached, graphs=steps_mode == "graphs").decode(sampler, until, on_step)
        first_eager = until
    recomputed = _RecomputedRows(run)
    for step in range(first_eager, steps):
        live = [r for r in all_rows if horizons[row_series[r]] > step]
        slid = {r for r in live if sliding == "exact" and lengths[row_series[r]] + step > max_context}
        cached.keep([r for r in live if r not in slid])
        recomputed.rows = [r for r in live if r in slid]
        groups_now = [g for g in (cached, recomputed) if g.rows]
        order = [r for g in groups_now for r in g.rows]
        s1 = _sample_in_row_order(sampler, [g.s1_logits(step) for g in groups_now], order)
        s1_parts = s1.split([len(g.rows) for g in groups_now])
        s2 = _sample_in_row_order(sampler, [g.s2_logits(p) for g, p in zip(groups_now, s1_parts)],
                                  order)
        index = torch.tensor(order, device=device)
        run.gen_s1[index, step], run.gen_s2[index, step] = s1, s2
        if on_step:
            on_step()
    return run.gen_s1, run.gen_s2


def _sample_in_row_order(sampler: RowSampler, logits: list[torch.Tensor], order: list[int]
                         ) -> torch.Tensor:
    """Sample over rows sorted by row number; return ids in ``order``."""
    merged = torch.cat(logits)
    ranks = sorted(range(len(order)), key=order.__getitem__)
    rank_index = torch.tensor(ranks, device=merged.device)
    sampled = sampler(merged[rank_index], [order[i] for i in ranks])
    out = torch.empty_like(sampled)
    out[rank_index] = sampled
    return out
