"""One decode position for rows of the decode batch: the model math that the eager step and
the fixed-shape (CUDA-graphed) step share."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers import RowGroups
from ..model import KronosModel, KVBuffers, SharedPrefix, window_masks


@dataclass
class DecodePass:
    """A fed position's final states and what its s2 logits attend to."""

    model: KronosModel
    state: torch.Tensor  # [rows, d]
    prefix: SharedPrefix
    prefix_mask: torch.Tensor
    own_context: tuple[torch.Tensor, torch.Tensor]
    own_mask: torch.Tensor | None
    groups: RowGroups

    def s1_logits(self) -> torch.Tensor:
        return self.model.s1_logits(self.state)

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        """s2 logits given the sampled s1 [rows]."""
        return self.model.s2_logits(self.state, s1, self.prefix, self.prefix_mask,
                                    self.own_context, self.own_mask, self.groups)


def decode_pass(model: KronosModel, prefixes: KVBuffers, own: KVBuffers, n_series: int,
                s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor, window: torch.Tensor,
                written: torch.Tensor, window_limit: int | None, groups: RowGroups,
                prefix_keys: int | None = None, own_keys: int | None = None) -> DecodePass:
    """Feed every row's last tokens ``s1``/``s2`` [rows] at position ``window + written``.

    Row r attends to its series' first ``window[r]`` prefix positions (slots ``0..n_series-1``
    of ``prefixes``) and to the ``written[r]`` own keys before it; its new key goes to own slot
    ``written[r]`` of row r (``window_limit``: approximate sliding's window). Attention reads
    the first ``prefix_keys`` prefix and ``own_keys`` own positions (default: the buffers'
    capacity; see :func:`aligned_keys`)."""
    rows = s1.shape[0]
    prefix_keys = prefixes.capacity if prefix_keys is None else prefix_keys
    own_keys = own.capacity if own_keys is None else own_keys
    positions = (window + written)[:, None]
    own_slots = torch.arange(own_keys, device=window.device)
    prefix_mask, own_mask = window_masks(window, positions, prefix_keys, own_slots,
                                         window_limit, written=own_slots[None] <= written[:, None])
    prefix = prefixes.prefix(slice(0, n_series), prefix_keys)
    states, own_context = model.extend(s1[:, None], s2[:, None], stamps, positions, prefix,
                                       prefix_mask, own.cache(slice(0, rows), slots=written,
                                                              length_cap=own_keys),
                                       own_mask, groups)
    return DecodePass(model, states[:, -1], prefix, prefix_mask, own_context, own_mask, groups)


KEY_ALIGN = 8  # key counts stay multiples of the CPU's float32 vector width


def aligned_keys(needed: int, capacity: int) -> int:
    """The keys a decode step reads: ``needed`` rounded up to a multiple of ``KEY_ALIGN``, at
    most ``capacity``. Keys past a row's own are masked (they weigh exactly zero); with the
    small model's shapes, steps over any aligned count gave the same bits as over the capacity
    (tests/test_decode_pass.py checks the numbers and the tokens)."""
    return min(capacity, -(-needed // KEY_ALIGN) * KEY_ALIGN)
