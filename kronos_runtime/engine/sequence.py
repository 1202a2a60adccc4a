"""One series' journey through the engine: its phase, progress counters and token buffers."""
from __future__ import annotations

import itertools
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum

import torch

from ..forecast_types import ForecastRequest
from ..series import PreparedSeries
from .priority import Priority

_ids = itertools.count()


class Phase(Enum):
    WAITING = "waiting"        # submitted, not admitted yet
    ENCODE = "encode"          # tokenizer encode of the whole input
    PREFILL = "prefill"        # the window, chunk by chunk, into the series' prefix slot
    DECODE = "decode"          # one position per step in the shared decode batch
    RECOMPUTE = "recompute"    # exact mode after the window slid: the window, chunk by chunk, per step
    DETOKENIZE = "detokenize"  # tokenizer decode of every path, a few paths at a time
    DONE = "done"


class Cancelled(Exception):
    """The caller gave up on this series (cancelled, timed out or gone)."""


@dataclass
class Recompute:
    """Progress of one exact-mode window recomputation (one generated step)."""

    step: int          # the step whose tokens this recomputation samples
    history: int       # window positions taken from the history (shared by the paths)
    generated: int     # window positions taken from each path's generated tokens
    history_done: int = 0
    generated_done: int = 0
    buffers: object = None  # (history KVBuffers, generated KVBuffers), made when it starts


@dataclass(eq=False)
class Sequence:
    """A submitted series: request, prepared input and everything the engine tracks for it."""

    request: ForecastRequest
    prepared: PreparedSeries
    seed: int
    priority: Priority
    future: Future
    deadline: float | None = None      # time.monotonic() past which it fails with TimeoutError
    cost: int = 0                      # estimated model-token positions (engine/cost.py)
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    submitted_ns: int = field(default_factory=time.time_ns)  # wall clock, for trace spans
    admitted: float | None = None
    admitted_ns: int | None = None
    phase: Phase = Phase.WAITING
    # set at admission
    generator: torch.Generator | None = None
    history_s1: torch.Tensor | None = None  # [T] token ids of the whole input
    history_s2: torch.Tensor | None = None
    history_stamps: torch.Tensor | None = None  # [T, 5]
    future_stamps: torch.Tensor | None = None   # [H, 5]
    gen_s1: torch.Tensor | None = None          # [paths, H] generated token ids
    gen_s2: torch.Tensor | None = None
    # progress
    prefilled: int = 0       # window positions prefilled
    steps_done: int = 0      # generated tokens per path
    slot: int | None = None  # prefix slot in the decode batch while it has one
    recompute: Recompute | None = None
    detokenized: int = 0     # paths decoded back to candles
    paths_out: object = None  # np.ndarray [paths, H, 6] normalised, filled by detokenize

    @property
    def paths(self) -> int:
        return self.request.sampling.sample_count

    @property
    def length(self) -> int:
        return self.prepared.length

    @property
    def horizon(self) -> int:
        return self.prepared.horizon

    @property
    def greedy(self) -> bool:
        return self.request.sampling.greedy

    def effective_priority(self, now: float, starvation_s: float) -> Priority:
        """Background work that has waited ``starvation_s`` counts as interactive (no starvation)."""
        if self.priority != Priority.INTERACTIVE and now - self.submitted >= starvation_s:
            return Priority.INTERACTIVE
        return self.priority

    def stamp_timing(self) -> None:
        """Attach (submitted, admitted, finished) wall-clock ns to the future, for trace spans."""
        self.future.timing = (self.submitted_ns, self.admitted_ns, time.time_ns())

    def gone(self, now: float) -> BaseException | None:
        """Why this sequence must stop now (cancelled or past its deadline), else None."""
        if self.future.cancelled():
            return Cancelled("cancelled")
        if self.deadline is not None and now > self.deadline:
            return TimeoutError("deadline passed")
        return None
