"""Fixed-shape decode steps of the engine's batch, replayed from CUDA graphs on a GPU.

On a GPU an eager decode step launches a few hundred small kernels from Python; the launches,
not the arithmetic, set the pace. Here a step has fixed shapes per *bucket*: rows padded to a
power of two, series to a power of two and paths per series to a power of two (as vLLM pads
its batch to a captured size), the batch's key/value buffers at their full capacity, and every
per-row number (window, slot written, series cell) in a device tensor refilled before each step.
Padded rows see only their own slot 0 and write only into unused rows of the buffers.

One step is two functions of those fixed tensors: up to the s1 logits, and the s2 logits given
the sampled s1 (sampling runs eagerly between them, with each series' own generator). On CUDA
a bucket is captured as two graphs once it has been used ``CAPTURE_AFTER_USES`` times, and
replayed from then on; elsewhere (the CPU tests) the same functions run eagerly, so the padded
arithmetic is checked against the eager step everywhere.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from ..layers import RowGroups
from ..model import KronosModel
from .batch import DecodeBatch
from .decode_pass import decode_pass

log = logging.getLogger("kronos.engine")

CAPTURE_AFTER_USES = 2  # a shape seen once is often transient: capture from its second step
MAX_BUCKETS = 32        # captured shapes kept (least recently used ones are dropped)


def bucket_size(n: int) -> int:
    """The power of two at or above ``n``."""
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class BucketShape:
    rows: int
    series: int
    paths: int


def bucket_shape(batch: DecodeBatch) -> BucketShape:
    """The padded shape of ``batch``'s decode step: enough cells for every padded row."""
    rows = bucket_size(batch.n_rows)
    series = bucket_size(batch.n_series)
    paths = bucket_size(max(seq.paths for seq in batch.series))
    reserved = sum(seq.paths for seq in batch.series)  # cells of real rows and of prefilling series
    while series * paths - reserved < rows - batch.n_rows:
        paths *= 2
    return BucketShape(rows, series, paths)


def row_cells(batch: DecodeBatch, shape: BucketShape) -> tuple[list[int], list[int]]:
    """(series, path cell) of every padded row: real rows at their series slot and path, padded
    rows at cells no real row uses (so no two rows share a cell)."""
    series = [seq.slot for seq, _ in batch.rows]
    cells = [path for _, path in batch.rows]
    used = [0] * shape.series
    for seq in batch.series:
        used[seq.slot] = seq.paths
    free = ((s, c) for s in range(shape.series) for c in range(used[s], shape.paths))
    for _ in range(shape.rows - batch.n_rows):
        s, c = next(free)
        series.append(s)
        cells.append(c)
    return series, cells


class _Bucket:
    """Static inputs, the two step functions and (on CUDA) their graphs for one shape."""

    def __init__(self, model: KronosModel, batch: DecodeBatch, shape: BucketShape,
                 window_limit: int | None, stamp_like: torch.Tensor) -> None:
        device = model.device
        self.model, self.shape, self.window_limit = model, shape, window_limit
        self.prefixes, self.own = batch.prefixes, batch.own
        rows = shape.rows
        self.ints = torch.zeros(4, rows, dtype=torch.long, device=device)  # window, written, series, cell
        self.s1 = torch.zeros(rows, dtype=torch.long, device=device)
        self.s2 = torch.zeros_like(self.s1)
        self.sampled_s1 = torch.zeros_like(self.s1)
        self.stamps = torch.zeros(rows, 1, stamp_like.shape[-1], dtype=stamp_like.dtype, device=device)
        self.groups = RowGroups.fixed(self.ints[2], self.ints[3], shape.series, shape.paths)
        self.uses = 0
        self.graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None

    def load(self, batch: DecodeBatch, windows: list[int], stamps: torch.Tensor) -> None:
        """Copy this step's per-row inputs into the static tensors (one host-to-device copy)."""
        n = batch.n_rows
        series, cells = row_cells(batch, self.shape)
        host = torch.zeros(4, self.shape.rows, dtype=torch.long)
        host[0, :n] = torch.tensor(windows)
        host[1, :n] = torch.tensor(batch.own_len)
        host[2], host[3] = torch.tensor(series), torch.tensor(cells)
        self.ints.copy_(host)
        self.s1[:n].copy_(batch.last_s1[:n])
        self.s2[:n].copy_(batch.last_s2[:n])
        self.stamps[:n].copy_(stamps)

    # -- the two step functions (captured as graphs on CUDA) ----------------------------------
    def _first(self) -> torch.Tensor:
        """Feed every row's last tokens; their s1 logits (keeps what the s2 part needs)."""
        self.step = decode_pass(self.model, self.prefixes, self.own, self.shape.series, self.s1,
                                self.s2, self.stamps, self.ints[0], self.ints[1],
                                self.window_limit, self.groups)
        return self.step.s1_logits()

    def _second(self) -> torch.Tensor:
        return self.step.s2_logits(self.sampled_s1)

    # -- one step ------------------------------------------------------------------------------
    def s1_logits(self, capture: bool) -> torch.Tensor:
        self.uses += 1
        if capture and self.graphs is None and self.uses >= CAPTURE_AFTER_USES:
            self._capture()
        if self.graphs is not None:
            self.graphs[0].replay()
            return self.graphs[2]
        return self._first()

    def s2_logits(self, s1: torch.Tensor) -> torch.Tensor:
        self.sampled_s1[:s1.shape[0]].copy_(s1)
        if self.graphs is not None:
            self.graphs[1].replay()
            return self.graphs[3]
        return self._second()

    def _capture(self) -> None:
        """Warm up on a side stream (this writes the step's keys, exactly as the replay will
        again), then capture both functions into one memory pool."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._first()
            self._second()
        torch.cuda.current_stream().wait_stream(side)
        first, second = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        # thread_local: each model variant's engine thread may capture on the same GPU
        with torch.cuda.graph(first, capture_error_mode="thread_local"):
            s1_out = self._first()
        with torch.cuda.graph(second, pool=first.pool(), capture_error_mode="thread_local"):
            s2_out = self._second()
        self.graphs = (first, second, s1_out, s2_out)


class StaticDecode:
    """Decode steps of fixed shape per bucket; captured as CUDA graphs when ``graphs`` is set."""

    def __init__(self, model: KronosModel, window_limit: int | None, graphs: bool) -> None:
        self.model, self.window_limit, self.graphs = model, window_limit, graphs
        self.buckets: OrderedDict[BucketShape, _Bucket] = OrderedDict()
        self.buffers: tuple | None = None  # the batch buffers and rotary table the buckets use
        self.captures = 0

    def forward(self, batch: DecodeBatch, windows: list[int], stamps: torch.Tensor
                ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The s1 logits [rows, vocab] of this step, and the function giving its s2 logits."""
        bucket = self._bucket(batch, stamps)
        bucket.load(batch, windows, stamps)
        captured = bucket.graphs is not None
        try:
            s1_logits = bucket.s1_logits(capture=self.graphs)
        except Exception:
            if captured or not self.graphs:
                raise
            # capture failed (the warm-up already wrote this step's keys): go on without graphs
            log.exception("CUDA graph capture failed; decoding eagerly with fixed shapes",
                          extra={"event": "cuda_graph_capture_failed"})
            self.graphs, bucket.graphs = False, None
            s1_logits = bucket.s1_logits(capture=False)
        self.captures += bucket.graphs is not None and not captured
        rows = batch.n_rows
        return s1_logits[:rows], lambda s1: bucket.s2_logits(s1)[:rows]

    def _bucket(self, batch: DecodeBatch, stamps: torch.Tensor) -> _Bucket:
        buffers = (batch.prefixes, batch.own, self.model.rope.reserved(self.model.device,
                                                                       self.model.dtype)[0])
        if self.buffers is None or any(a is not b for a, b in zip(buffers, self.buffers)):
            self.buckets.clear()  # the buffers moved: every bucket points at the old ones
            self.buffers = buffers
        shape = bucket_shape(batch)
        bucket = self.buckets.get(shape)
        if bucket is None:
            bucket = _Bucket(self.model, batch, shape, self.window_limit, stamps)
            self.buckets[shape] = bucket
            while len(self.buckets) > MAX_BUCKETS:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(shape)
        return bucket
