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
- orders the series with chunked work (tokenizer encode, window prefill, exact-mode window
  recomputation, tokenizer decode): by priority, then finishing work (tokenizer decode) and
  short requests (cost at most ``short_cost``) first, then the rest by **response ratio**, time
  in the engine over estimated cost, highest first. Small work overtakes big work only while
  it has waited less, relative to its size: a medium request is not starved by a stream of
  smaller ones, nor by old big ones, and a big one goes first once it has waited long for its
  size (highest response ratio next). The engine runs each series' chunks back to back in that
  order until the step's budget is spent; at most ``max_recomputing`` series hold recomputation
  buffers at once;
- lets the oldest series outside the short lane lead every other step: it runs one chunk
  before everyone (or, once it has been in the engine ``starvation_s``, up to ``step_tokens``),
  so the biggest work, which the response ratio puts last, always progresses;
- but first keeps deadlines (earliest deadline first, as soon as it matters): take the series
  outside the short lane that have a deadline, earliest first, and for each the time its work
  and the work of those before it would take alone (what is left of their cost, at the measured
  seconds per chunked token). Once some deadline is nearer than ``deadline_margin`` times that
  time, the earliest deadline is *urgent*: every step its chunks run right after the short lane's,
  ahead of all other big work (and of the oldest series' lead), so accepted big work finishes
  before it would time out while short requests stay fast. ``deadline_slack_s`` is added to the
  margin: a series at the edge finishes that much before its deadline, not just at it. A
  series that could not make it even alone is left out: it is never urgent and does not count.

The bound on one step: one decode position per live row plus at most ``step_tokens`` chunked
tokens (a single chunk is at most ``chunk_tokens`` positions, or a bounded tokenizer call).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

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
    deadline_margin: float = 1.5  # urgent once the deadline is nearer than this times the work due
    deadline_slack_s: float = 10.0  # ... plus this many seconds
    request_level: bool = False  # the old batcher, for comparison: admit only when idle

    def __post_init__(self) -> None:
        if min(self.max_live_series, self.max_live_rows, self.chunk_tokens, self.step_tokens,
               self.max_recomputing, self.short_cost, self.short_step_tokens) < 1:
            raise ValueError("engine limits must be at least 1")
        if not 0 < self.background_share <= 1:
            raise ValueError("background_share must be in (0, 1]")
        if self.deadline_margin < 1 or self.deadline_slack_s < 0:
            raise ValueError("deadline_margin must be at least 1 and deadline_slack_s not negative")


# series admitted this step (still WAITING while planned) encode in this very step
CHUNK_PHASES = (Phase.WAITING, Phase.ENCODE, Phase.PREFILL, Phase.RECOMPUTE, Phase.DETOKENIZE)


@dataclass
class StepPlan:
    admit: list[Sequence] = field(default_factory=list)
    chunks: list[Sequence] = field(default_factory=list)  # chunked work, best first
    budget: float = 0.0  # model-token equivalents of chunked work this step
    leader: Sequence | None = None  # runs up to lead_budget before everyone else
    lead_budget: float = 0.0
    urgent: Sequence | None = None  # near its deadline: first after the short lane, every step


class Scheduler:
    """Plans each step from the waiting queue and the live series.

    ``remaining`` estimates what is left of a live series' cost (model-token positions);
    :meth:`observe` feeds it the measured speed of chunked work."""

    SPEED_WEIGHT = 0.1  # weight of each observed step in the moving average of seconds per token

    def __init__(self, limits: EngineLimits,
                 remaining: Callable[[Sequence], float] = lambda seq: seq.cost) -> None:
        self.limits = limits
        self.remaining = remaining
        self.waiting: list[Sequence] = []
        self.plans = 0
        self.seconds_per_token = 0.0  # nothing measured yet: no deadline is judged at risk

    def observe(self, tokens: float, seconds: float) -> None:
        """One step ran ``tokens`` model-token equivalents of chunked work in ``seconds``."""
        if tokens <= 0:
            return
        rate = seconds / tokens
        previous = self.seconds_per_token
        self.seconds_per_token = rate if not previous else previous + self.SPEED_WEIGHT * (rate - previous)

    def urgent(self, big: list[Sequence], now: float) -> Sequence | None:
        """The earliest deadline among ``big`` once some deadline is at risk: nearer than
        ``deadline_margin`` times the time alone of its own work and of all earlier deadlines'
        (plus ``deadline_slack_s``). Series that could not make it even alone are left out."""
        if not self.seconds_per_token:
            return None
        feasible, ahead, at_risk = [], 0.0, False
        for seq in sorted((s for s in big if s.deadline is not None), key=lambda s: (s.deadline, s.id)):
            alone, left = self.remaining(seq) * self.seconds_per_token, seq.deadline - now
            if alone > left:
                continue
            feasible.append(seq)
            ahead += alone
            due = self.limits.deadline_margin * ahead + self.limits.deadline_slack_s
            at_risk = at_risk or left < due
        return feasible[0] if at_risk else None

    def order(self, seq: Sequence, now: float) -> tuple:
        return (seq.effective_priority(now, self.limits.starvation_s), seq.submitted, seq.id)

    def plan(self, live: list[Sequence], now: float | None = None) -> StepPlan:
        """This step's admissions, chunk order and budgets."""
        now = time.monotonic() if now is None else now
        plan = StepPlan()
        self._admit(plan, live, now)
        self._chunks(plan, live + plan.admit, now)
        plan.budget = self.budget(live + plan.admit, now)
        big = [seq for seq in plan.chunks if not self.small_lane(seq)]
        plan.urgent = self.urgent(big, now)
        if plan.urgent is not None:
            small = [seq for seq in plan.chunks if self.small_lane(seq)]
            plan.chunks = small + [plan.urgent] + [seq for seq in big if seq is not plan.urgent]
        else:
            plan.leader = min(big, key=lambda seq: (seq.submitted, seq.id)) if big else None
            plan.lead_budget = self.lead_budget(plan.leader, now)
        return plan

    def lead_budget(self, leader: Sequence | None, now: float) -> float:
        """Every other step the leader runs one chunk (``chunk_tokens``) first, so big work
        always progresses while short work waits at most one step behind it; once it has been
        in the engine ``starvation_s`` it leads with ``step_tokens``."""
        self.plans += 1
        if leader is None or self.plans % 2:
            return 0.0
        aged = now - leader.submitted >= self.limits.starvation_s
        return float(self.limits.step_tokens if aged else self.limits.chunk_tokens)

    @staticmethod
    def response_ratio(seq: Sequence, now: float) -> float:
        """Seconds in the engine per estimated position: how long it waited for its size."""
        return (now - seq.submitted) / max(1, seq.cost)

    def short(self, seq: Sequence) -> bool:
        """A short request: estimated cost at most ``short_cost``."""
        return seq.cost <= self.limits.short_cost

    def small_lane(self, seq: Sequence) -> bool:
        """Finishing work (tokenizer decode) and short requests go before big work."""
        return seq.phase == Phase.DETOKENIZE or self.short(seq)

    def budget(self, live: list[Sequence], now: float) -> float:
        """``short_step_tokens`` while a short interactive request is live (its few steps are
        its whole latency), else ``step_tokens`` (longer steps, less decode overhead)."""
        limits = self.limits
        if limits.request_level:
            return float("inf")
        if any(self.short(seq)
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
        pending = sorted((s for s in live if s.phase in CHUNK_PHASES),
                         key=lambda s: (s.effective_priority(now, limits.starvation_s),
                                        not self.small_lane(s), -self.response_ratio(s, now), s.id))
        recomputing = sum(1 for s in pending if s.phase == Phase.RECOMPUTE and s.recompute is not None
                          and s.recompute.buffers is not None)
        for seq in pending:
            if seq.phase == Phase.RECOMPUTE and (seq.recompute is None or seq.recompute.buffers is None):
                if recomputing >= limits.max_recomputing:
                    continue
                recomputing += 1
            plan.chunks.append(seq)
