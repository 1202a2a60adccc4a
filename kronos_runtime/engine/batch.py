"""The persistent decode batch: live series' prefix keys/values and decoding rows' own caches.

Series occupy slots ``0 .. n_series-1`` of the prefix buffers (their prefill writes there) and
decoding rows occupy rows ``0 .. n_rows-1`` of the own-cache buffers; both stay compact (a
leaving series or row is replaced by the last one), so every step works on leading slices
without gathering. Rows are at different steps: each writes its new key at its own slot.
"""
from __future__ import annotations

import torch

from ..layers import RowGroups
from ..model import KronosModel, KVBuffers
from .decode_pass import KEY_ALIGN
from .sequence import Sequence


def _capacity(needed: int, current: int) -> int:
    """Next power of two at or above ``needed`` (never below ``current``)."""
    size = max(1, current)
    while size < needed:
        size *= 2
    return size


class DecodeBatch:
    """Prefix slots per live series, own-cache rows per decoding sample path."""

    def __init__(self, model: KronosModel, keep_buffers: bool = False) -> None:
        self.model = model
        self.keep_buffers = keep_buffers  # keep memory when idle (captured graphs point into it)
        self.device = model.device
        self.prefixes = KVBuffers(model, 0, 0)
        self.own = KVBuffers(model, 0, 0)
        self.series: list[Sequence] = []            # by prefix slot
        self.rows: list[tuple[Sequence, int]] = []  # by row: (series, path)
        self.own_len: list[int] = []                # own keys written per row
        self.last_s1 = torch.zeros(0, dtype=torch.long, device=self.device)
        self.last_s2 = torch.zeros(0, dtype=torch.long, device=self.device)
        self._layout: tuple[RowGroups, dict[int, torch.Tensor]] | None = None

    @property
    def n_series(self) -> int:
        return len(self.series)

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    # -- series slots -------------------------------------------------------------------------
    def add_series(self, seq: Sequence, window: int) -> None:
        """Give ``seq`` a prefix slot with room for ``window`` positions."""
        needed_slots = self.n_series + 1
        if needed_slots > self.prefixes.n or window > self.prefixes.capacity:
            self.prefixes = self.prefixes.grown(self.model, _capacity(needed_slots, self.prefixes.n),
                                                _capacity(max(window, KEY_ALIGN), self.prefixes.capacity))
        seq.slot = self.n_series
        self.series.append(seq)
        self._layout = None

    def remove_series(self, seq: Sequence) -> None:
        """Free ``seq``'s prefix slot (its rows must be gone); the last series takes its place."""
        slot, last = seq.slot, self.n_series - 1
        if slot is None:
            return
        if slot != last:
            self.prefixes.copy_row(last, slot)
            moved = self.series[last]
            moved.slot = slot
            self.series[slot] = moved
        self.series.pop()
        seq.slot = None
        self._layout = None
        if not self.series and not self.keep_buffers:  # idle: hand the memory back
            self.prefixes = KVBuffers(self.model, 0, 0)

    # -- decoding rows ------------------------------------------------------------------------
    def add_rows(self, seq: Sequence) -> None:
        """Rows for every path of ``seq``, whose first tokens (step 0) are sampled."""
        start, paths = self.n_rows, seq.paths
        needed = start + paths
        if needed > self.own.n or seq.horizon > self.own.capacity:
            self.own = self.own.grown(self.model, _capacity(needed, self.own.n),
                                      _capacity(max(seq.horizon, KEY_ALIGN), self.own.capacity))
        if needed > self.last_s1.shape[0]:
            size = _capacity(needed, self.last_s1.shape[0])
            self.last_s1 = torch.cat([self.last_s1, self.last_s1.new_zeros(size - self.last_s1.shape[0])])
            self.last_s2 = torch.cat([self.last_s2, self.last_s2.new_zeros(size - self.last_s2.shape[0])])
        self.rows.extend((seq, p) for p in range(paths))
        self.own_len.extend([seq.steps_done - 1] * paths)
        self.last_s1[start:needed] = seq.gen_s1[:, seq.steps_done - 1]
        self.last_s2[start:needed] = seq.gen_s2[:, seq.steps_done - 1]
        self._layout = None

    def remove_rows(self, seq: Sequence) -> None:
        """Drop every row of ``seq``; the last rows take their places."""
        mine = sorted((r for r, (owner, _) in enumerate(self.rows) if owner is seq), reverse=True)
        for row in mine:
            last = self.n_rows - 1
            if row != last:
                self.own.copy_row(last, row)
                self.rows[row], self.own_len[row] = self.rows[last], self.own_len[last]
                self.last_s1[row], self.last_s2[row] = self.last_s1[last], self.last_s2[last]
            self.rows.pop()
            self.own_len.pop()
        self._layout = None
        if not self.rows and not self.keep_buffers:
            self.own = KVBuffers(self.model, 0, 0)

    def layout(self) -> tuple[RowGroups, dict[int, torch.Tensor]]:
        """Rows grouped by prefix slot, and each series' rows in path order (cached until changed)."""
        if self._layout is None:
            groups = RowGroups([seq.slot for seq, _ in self.rows], self.device)
            by_series: dict[int, list[tuple[int, int]]] = {}
            for row, (seq, path) in enumerate(self.rows):
                by_series.setdefault(seq.id, []).append((path, row))
            rows_of = {sid: torch.tensor([row for _, row in sorted(pairs)], device=self.device)
                       for sid, pairs in by_series.items()}
            self._layout = (groups, rows_of)
        return self._layout

    def decoding(self) -> list[Sequence]:
        """Series with rows in the batch, in row order of first appearance."""
        return list(dict.fromkeys(seq for seq, _ in self.rows))
