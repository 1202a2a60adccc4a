"""Who runs this step: admission of waiting series and the per-step budget of chunked work.

Every step the decode batch advances all of its rows by one position (nothing admitted is ever
starved of decode steps). Around that, the scheduler

- admits waiting series while the live bounds allow (``max_live_series`` series holding a prefix
  slot or in flight, ``max_live_rows`` sample paths), interactive before background, oldest first;
  background series that waited ``starvation_s`` count as interactive; background work may hold
  at most ``background_share`` of the live rows, so interactive requests always find room;
- sets the step's budget: ``step_tokens`` model-token equivalents of chunked work, or
  ``short_step_tokens`` while a short interactive request (estimated cost at most
  ``short_cost``) is live, so its few steps are short;
- lets the oldest series lead every other step: it runs one chunk before the others (or, once
  it has been in the engine ``starvation_s``, up to ``step_tokens``), so long work always
  progresses;
- orders the series with chunked work (tokenizer encode, window prefill, exact-mode window
  recomputation, tokenizer decode): the oldest first (the leader), then by priority, phase
  (finishing work first, then new work, then recomputations) and size (shortest first, so a
  short request is not stuck behind a long prefill); after the lead, the engine runs each
  series' chunks back to back in that order until the step's budget is spent. At most
  ``max_recomputing`` series hold recomputation buffers at once.

The bound on one step: one decode position per live row plus at most ``step_tokens`` chunked
tokens (a single chunk is at most ``chunk_tokens`` positions, or a bounded tokenizer call).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .priority import Priority
from .sequence import Phase, Sequence


@dataclass(frozen=True)
class EngineLimits:
    """Bounds of the engine; see the module docstring."""

    max_live_series: int = 64
    max_live_rows: int = 256
    chunk_tokens: int = 128
    step_tokens: int = 384
    max_recomputing: int = 8
    short_cost: int = 512
    short_step_tokens: int = 192
    starvation_s: float = 30.0
    background_share: float = 0.75
    request_level: bool = False  # the old batcher, for comparison: admit only when idle

    def __post_init__(self) -> None:
        if min(self.max_live_series, self.max_live_rows, self.chunk_tokens, self.step_tokens,
               self.max_recomputing, self.short_cost, self.short_step_tokens) < 1:
            raise ValueError("engine limits must be at least 1")
        if not 0 < self.background_share <= 1:
            raise ValueError("background_share must be in (0, 1]")


# series admitted this step (still WAITING while planned) encode in this very step
PHASE_RANK = {Phase.DETOKENIZE: 0, Phase.WAITING: 1, Phase.ENCODE: 1, Phase.PREFILL: 1,
              Phase.RECOMPUTE: 2}


@dataclass
class StepPlan:
    admit: list[Sequence] = field(default_factory=list)
    chunks: list[Sequence] = field(default_factory=list)  # chunked work, best first
    budget: float = 0.0  # model-token equivalents of chunked work this step
    lead_budget: float = 0.0  # what the oldest series runs first (0: it does not lead)


class Scheduler:
    """Plans each step from the waiting queue and the live series."""

    def __init__(self, limits: EngineLimits) -> None:
        self.limits = limits
        self.waiting: list[Sequence] = []
        self.plans = 0

    @staticmethod
    def remaining(seq: Sequence) -> int:
        """Positions left in the series' current chunked phase (a rough size for ordering)."""
        if seq.phase == Phase.PREFILL:
            return seq.length - seq.prefilled
        if seq.phase in (Phase.WAITING, Phase.ENCODE):
            return seq.length
        return seq.paths * seq.horizon

    def order(self, seq: Sequence, now: float) -> tuple:
        return (seq.effective_priority(now, self.limits.starvation_s), seq.submitted, seq.id)

    def plan(self, live: list[Sequence], now: float | None = None) -> StepPlan:
        """This step's admissions, chunk order and budgets."""
        now = time.monotonic() if now is None else now
        plan = StepPlan()
        self._admit(plan, live, now)
        self._chunks(plan, live + plan.admit, now)
        plan.budget = self.budget(live + plan.admit, now)
        plan.lead_budget = self.lead_budget(plan.chunks, now)
        return plan

    def lead_budget(self, order: list[Sequence], now: float) -> float:
        """Every other step the oldest series leads with one chunk (``chunk_tokens``), so long
        work always progresses while short work waits at most one step behind it; once it has
        been in the engine ``starvation_s`` it leads with ``step_tokens``."""
        self.plans += 1
        if not order or self.plans % 2:
            return 0.0
        aged = now - order[0].submitted >= self.limits.starvation_s
        return float(self.limits.step_tokens if aged else self.limits.chunk_tokens)

    def budget(self, live: list[Sequence], now: float) -> float:
        """``short_step_tokens`` while a short interactive request is live (its few steps are
        its whole latency), else ``step_tokens`` (longer steps, less decode overhead)."""
        limits = self.limits
        if limits.request_level:
            return float("inf")
        if any(seq.cost <= limits.short_cost
               and seq.effective_priority(now, limits.starvation_s) == Priority.INTERACTIVE
               for seq in live):
            return float(min(limits.short_step_tokens, limits.step_tokens))
        return float(limits.step_tokens)

    def _admit(self, plan: StepPlan, live: list[Sequence], now: float) -> None:
        limits = self.limits
        if limits.request_level and live:
            return
        rows = sum(s.paths for s in live)
        background = sum(s.paths for s in live if s.priority != Priority.INTERACTIVE)
        series = len(live)
        for seq in sorted(self.waiting, key=lambda s: self.order(s, now)):
            if series >= limits.max_live_series:
                break
            fits = rows + seq.paths <= limits.max_live_rows or rows == 0  # an oversized one runs alone
            if not fits:
                break  # head of line waits: a large request is not overtaken forever
            if (seq.effective_priority(now, limits.starvation_s) != Priority.INTERACTIVE
                    and background + seq.paths > limits.background_share * limits.max_live_rows
                    and rows > 0):
                continue
            plan.admit.append(seq)
            rows += seq.paths
            series += 1
            if seq.priority != Priority.INTERACTIVE:
                background += seq.paths
        admitted = set(map(id, plan.admit))
        self.waiting = [s for s in self.waiting if id(s) not in admitted]

    def _chunks(self, plan: StepPlan, live: list[Sequence], now: float) -> None:
        """Series with chunked work, in the order they get the step's token budget."""
        limits = self.limits
        pending = [s for s in live if s.phase in PHASE_RANK]
        recomputing = sum(1 for s in pending if s.phase == Phase.RECOMPUTE and s.recompute is not None
                          and s.recompute.buffers is not None)
        if len(pending) > 1:  # the oldest goes first (never starved), then the shortest work
            oldest = min(pending, key=lambda s: (s.effective_priority(now, limits.starvation_s),
                                                 s.submitted, s.id))
            rest = sorted((s for s in pending if s is not oldest),
                          key=lambda s: (s.effective_priority(now, limits.starvation_s),
                                         PHASE_RANK[s.phase], self.remaining(s), s.submitted, s.id))
            pending = [oldest, *rest]
        for seq in pending:
            if seq.phase == Phase.RECOMPUTE and (seq.recompute is None or seq.recompute.buffers is None):
                if recomputing >= limits.max_recomputing:
                    continue
                recomputing += 1
            plan.chunks.append(seq)
