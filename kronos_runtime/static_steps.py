"""Fixed-shape decode steps, replayed from CUDA graphs on a GPU.

Eager decoding launches a few hundred small kernels per step from Python; on a GPU the launches,
not the arithmetic, set the pace. Here every step has the same shapes: all rows stay in the
batch, each own cache has its full capacity and is written at a slot held in a device tensor,
and masks hide the slots not written yet (and, in approximate mode, keys older than the window).
One step is then two functions of fixed buffers: up to the s1 logits, and the s2 logits given
the sampled s1. On CUDA each is captured once per call as a graph and replayed every step;
sampling runs eagerly between the two. Elsewhere (tests on the CPU) the same functions run
eagerly, so the fixed-shape arithmetic is checked against the eager path everywhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .model import window_masks
from .sampling import RowSampler

if TYPE_CHECKING:
    from .generation import _CachedRows

MIN_GRAPHED_STEPS = 4  # below this, capturing costs more than the launches it saves


class StaticSteps:
    """Decode steps ``1 .. until-1`` of every row of a run, with fixed shapes.

    ``cached`` is the run's cached row group covering all rows (its own cache has room for every
    step); on return that cache holds steps ``1 .. until-1`` and can go on eagerly.
    """

    def __init__(self, cached: "_CachedRows", graphs: bool) -> None:
        run = cached.run
        self.run, self.cached, self.graphs = run, cached, graphs
        device = run.device
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # the position fed: step - 1
        for kv in (*cached.own.layers, cached.own.context):
            kv.slot = self.slot
        groups, prefix = cached.groups, cached.prefix
        self.prefix_len = prefix.lengths[groups.series]
        self.row_future = run.future[groups.series]
        self.prefix_keys = prefix.layers[0][0].shape[2]
        self.own_slots = torch.arange(cached.own.context.keys.shape[2], device=device)
        self.sampled_s1 = torch.zeros(len(cached.rows), dtype=torch.long, device=device)

    def _s1_logits(self) -> torch.Tensor:
        """Feed position ``slot`` of every row; its s1 logits (keeps state for the s2 part)."""
        run, cached, slot = self.run, self.cached, self.slot
        s1 = run.gen_s1.index_select(1, slot)
        s2 = run.gen_s2.index_select(1, slot)
        stamps = self.row_future.index_select(1, slot)
        positions = (self.prefix_len + slot)[:, None]
        self.prefix_mask, self.own_mask = window_masks(
            self.prefix_len, positions, self.prefix_keys, self.own_slots, run.window_limit,
            written=self.own_slots <= slot)
        states, self.own_context = run.model.extend(s1, s2, stamps, positions, cached.prefix,
                                                    self.prefix_mask, cached.own, self.own_mask,
                                                    cached.groups)
        self.state = states[:, -1]
        return run.model.s1_logits(self.state)

    def _s2_logits(self) -> torch.Tensor:
        return self.run.model.s2_logits(self.state, self.sampled_s1, self.cached.prefix,
                                        self.prefix_mask, self.own_context, self.own_mask,
                                        self.cached.groups)

    def decode(self, sampler: RowSampler, until: int, on_step: Callable[[], None] | None) -> None:
        """Generate steps 1 .. until-1 into the run's token buffers."""
        s1_logits, s2_logits = self._s1_logits, self._s2_logits
        for step in range(1, until):
            self.slot.fill_(step - 1)
            if step == 1 and self.graphs:
                s1_logits, s2_logits = self._capture(sampler, on_step)
                continue
            self._sample_step(step, sampler, s1_logits, s2_logits)
            if on_step:
                on_step()
        for kv in (*self.cached.own.layers, self.cached.own.context):
            kv.slot, kv.length = None, until - 1

    def _sample_step(self, step: int, sampler: RowSampler, s1_logits: Callable[[], torch.Tensor],
                     s2_logits: Callable[[], torch.Tensor]) -> None:
        rows = self.cached.rows
        s1 = sampler(s1_logits(), rows)
        self.sampled_s1.copy_(s1)
        s2 = sampler(s2_logits(), rows)
        self.run.gen_s1[:, step], self.run.gen_s2[:, step] = s1, s2

    def _capture(self, sampler: RowSampler, on_step: Callable[[], None] | None
                 ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
        """Run step 1 eagerly on a side stream (the warm-up graphs need), then capture it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._sample_step(1, sampler, self._s1_logits, self._s2_logits)
        torch.cuda.current_stream().wait_stream(side)
        if on_step:
            on_step()
        first, second = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(first, capture_error_mode="thread_local"):
            s1_out = self._s1_logits()
        with torch.cuda.graph(second, pool=first.pool(), capture_error_mode="thread_local"):
            s2_out = self._s2_logits()

        def replay_s1() -> torch.Tensor:
            first.replay()
            return s1_out

        def replay_s2() -> torch.Tensor:
            second.replay()
            return s2_out
        return replay_s1, replay_s2
