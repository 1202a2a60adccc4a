"""Autoregressive token generation for ragged batches of series and sample paths.

Each series is prefilled once over its window; its sample paths then share that prefix
through copies of the key/value cache. While a row's sequence fits in ``max_context`` every
step is one cached position, exactly as the reference's full recomputation. Once the window
slides, every hidden state changes: ``exact`` mode recomputes those rows' whole windows (as
the reference does), ``approximate`` mode keeps the cache and masks out the oldest key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .model import KVCache, KronosModel
from .sampling import RowSampler

SlidingMode = Literal["exact", "approximate"]


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


class _CachedRows:
    """Rows decoded one cached position at a time."""

    def __init__(self, model: KronosModel, rows: list[int], cache: KVCache,
                 lengths: torch.Tensor, max_context: int, sliding: SlidingMode) -> None:
        self.model, self.rows, self.cache = model, rows, cache
        self.lengths = lengths  # next cache index per row
        self.max_context = max_context
        self.sliding = sliding
        self.state = self.mask = None

    def keep(self, rows: list[int]) -> None:
        if rows == self.rows:
            return
        where = {r: i for i, r in enumerate(self.rows)}
        index = torch.tensor([where[r] for r in rows], dtype=torch.long, device=self.lengths.device)
        self.cache.keep(index)
        self.lengths = self.lengths[index]
        self.rows = rows

    def s1_logits(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor) -> torch.Tensor:
        positions = self.lengths
        span = int(positions.max()) + 1
        keys = torch.arange(span, device=positions.device)
        valid = keys[None] <= positions[:, None]
        if self.sliding == "approximate":
            valid &= keys[None] > (positions - self.max_context)[:, None]
        self.mask = valid[:, None, None]
        self.state = self.model.step(s1, s2, stamps, positions, self.cache, self.mask)
        self.cache.write_context(self.state, self.model, positions)
        self.lengths = positions + 1
        return self.model.s1_logits(self.state)

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        span = self.mask.shape[-1]
        keys, values = (t[:, :, :span] for t in self.cache.context)
        return self.model.s2_logits(self.state, s1, keys, values, self.mask)


class _RecomputedRows:
    """Rows whose window slid (exact mode): the whole window is recomputed every step."""

    def __init__(self, model: KronosModel, max_context: int) -> None:
        self.model, self.max_context = model, max_context
        self.rows: list[int] = []
        self.state = self.keys = self.values = None

    def s1_logits(self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor) -> torch.Tensor:
        states, _ = self.model.prefill(s1, s2, stamps)
        self.state = states[:, -1]
        self.keys, self.values = self.model.context_keys_values(states)
        return self.model.s1_logits(self.state)

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        return self.model.s2_logits(self.state, s1, self.keys, self.values, None)


@torch.inference_mode()
def generate(model: KronosModel, series: list[SeriesTokens], sampler: RowSampler,
             row_series: list[int], max_context: int, sliding: SlidingMode = "exact",
             on_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``horizon`` token pairs for every row (sample path); rows are series-major.

    Returns s1 and s2 ids [rows, max_horizon]; entries past a series' horizon are unused.
    """
    device = model.head.proj_s1.weight.device
    lengths = [s.length for s in series]
    horizons = [s.horizon for s in series]
    row_of = torch.tensor(row_series, device=device)
    rows_total, steps = len(row_series), max(horizons)
    gen_s1 = torch.zeros(rows_total, steps, dtype=torch.long, device=device)
    gen_s2 = torch.zeros_like(gen_s1)
    future = pad_stack([s.future_stamps for s in series])

    # Step 0: prefill each series' window once, shared by all of its paths.
    windows = [slice(max(0, s.length - max_context), None) for s in series]
    states, kv = model.prefill(pad_stack([s.s1[w] for s, w in zip(series, windows)]),
                               pad_stack([s.s2[w] for s, w in zip(series, windows)]),
                               pad_stack([s.stamps[w] for s, w in zip(series, windows)]))
    window_len = torch.tensor([min(n, max_context) for n in lengths], device=device)
    last = states[torch.arange(len(series), device=device), window_len - 1][row_of]
    context_kv = model.context_keys_values(states)
    mask = (torch.arange(states.shape[1], device=device)[None] < window_len[:, None])[row_of]
    mask = mask[:, None, None]
    all_rows = list(range(rows_total))
    s1 = sampler(model.s1_logits(last), all_rows)
    s2 = sampler(model.s2_logits(last, s1, context_kv[0][row_of], context_kv[1][row_of], mask),
                 all_rows)
    gen_s1[:, 0], gen_s2[:, 0] = s1, s2
    if on_step:
        on_step()
    if steps == 1:
        return gen_s1, gen_s2

    capacity = states.shape[1] + steps - 1
    if sliding == "exact":
        capacity = min(capacity, max_context)
    cache = KVCache(model, rows_total, capacity, device, states.dtype)
    cache.fill(kv, context_kv, row_of)
    cached = _CachedRows(model, all_rows, cache, window_len[row_of].clone(), max_context, sliding)
    recomputed = _RecomputedRows(model, max_context)
    history = [(s.s1, s.s2, torch.cat([s.stamps, future[i]])) for i, s in enumerate(series)]

    for step in range(1, steps):
        live = [r for r in all_rows if horizons[row_series[r]] > step]
        slid = [r for r in live if sliding == "exact" and lengths[row_series[r]] + step > max_context]
        cached.keep([r for r in live if r not in set(slid)])
        recomputed.rows = slid
        groups = [g for g in (cached, recomputed) if g.rows]
        logits = []
        for group in groups:
            rows = torch.tensor(group.rows, device=device)
            if group is cached:
                s1_in, s2_in = gen_s1[rows, step - 1], gen_s2[rows, step - 1]
                stamps = future[row_of[rows], step - 1]
            else:
                s1_in, s2_in, stamps = _windows(history, gen_s1, gen_s2, group.rows, row_series,
                                                step, max_context)
            logits.append(group.s1_logits(s1_in, s2_in, stamps))
        order = [r for g in groups for r in g.rows]
        s1 = _sample_in_row_order(sampler, logits, order)
        s1_parts = s1.split([len(g.rows) for g in groups])
        s2 = _sample_in_row_order(sampler, [g.s2_logits(p) for g, p in zip(groups, s1_parts)], order)
        index = torch.tensor(order, device=device)
        gen_s1[index, step], gen_s2[index, step] = s1, s2
        if on_step:
            on_step()
    return gen_s1, gen_s2


def _windows(history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
             gen_s1: torch.Tensor, gen_s2: torch.Tensor, rows: list[int], row_series: list[int],
             step: int, max_context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The last ``max_context`` tokens and stamps (history + generated so far) of ``rows``."""
    s1, s2, stamps = [], [], []
    for r in rows:
        h1, h2, hs = history[row_series[r]]
        s1.append(torch.cat([h1, gen_s1[r, :step]])[-max_context:])
        s2.append(torch.cat([h2, gen_s2[r, :step]])[-max_context:])
        stamps.append(hs[:h1.shape[0] + step][-max_context:])
    return torch.stack(s1), torch.stack(s2), torch.stack(stamps)


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
