"""The engine: owns generation across requests, one step at a time.

``submit`` queues a prepared series and returns a future. Each :meth:`Engine.step` drops
cancelled and expired series, asks the :class:`Scheduler` what to run, runs it with the
:class:`Executor` (chunks of per-series work, then one decode position for every decoding row)
and moves series between phases; a series whose last path is decoded is answered at once.
A failure inside one series' work fails only that series. Run steps from your own thread
(:meth:`run_until_idle`, what the CLI and ``KronosForecaster.forecast`` do) or start the
engine's thread (:meth:`start`, what the service does).
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from ..forecast_types import ForecastRequest, build_result
from ..series import PreparedSeries
from .batch import DecodeBatch
from .cost import TOKENIZER_COST, series_cost
from .executor import Executor, SlidingMode, StepMode
from .priority import Priority
from .scheduler import EngineLimits, Scheduler
from .sequence import Cancelled, Phase, Sequence

log = logging.getLogger("kronos.engine")

CHUNKED = (Phase.ENCODE, Phase.PREFILL, Phase.RECOMPUTE, Phase.DETOKENIZE)


@dataclass
class StepStats:
    """What one step did (for metrics)."""

    seconds: float
    decoded_rows: int       # rows advanced by the decode step
    decoded_series: int
    live_rows: int
    live_series: int
    chunk_tokens: int       # model-token equivalents of chunked work run
    urgent: bool            # a series near its deadline ran first after the short lane
    admitted: list[Sequence]
    completed: list[Sequence]
    failed: int
    waiting: int


class Engine:
    """Continuous batching over one model + tokenizer."""

    def __init__(self, model, tokenizer, max_context: int, sliding: SlidingMode = "exact",
                 limits: EngineLimits | None = None,
                 on_step: Callable[[StepStats], None] | None = None,
                 steps_mode: StepMode = "eager") -> None:
        self.limits = limits or EngineLimits()
        self.executor = Executor(model, tokenizer, max_context, sliding, self.limits.chunk_tokens,
                                 steps_mode)
        self.scheduler = Scheduler(self.limits, self.remaining_cost)
        # captured graphs point into the batch's buffers: keep them when idle
        self.batch = DecodeBatch(model, keep_buffers=steps_mode == "graphs")
        self.device = model.device
        self.live: list[Sequence] = []
        self.on_step = on_step
        self.steps = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- callers ------------------------------------------------------------------------------
    def submit(self, request: ForecastRequest, prepared: PreparedSeries,
               priority: Priority = Priority.INTERACTIVE, deadline: float | None = None) -> Future:
        """Queue one validated series; the future gets its :class:`ForecastResult`.

        Cancel the future to stop it (its rows leave at the next step); past ``deadline``
        (``time.monotonic()``) it fails with ``TimeoutError``.
        """
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        future: Future = Future()
        seq = Sequence(request, prepared, seed, Priority(priority), future, deadline,
                       cost=series_cost(prepared.length, prepared.horizon, request.sampling.sample_count,
                                        self.executor.max_context, self.executor.sliding == "exact"))
        with self._lock:
            self.scheduler.waiting.append(seq)
            self._lock.notify_all()
        future.add_done_callback(lambda _: self._wake())
        return future

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    @property
    def waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def queued_series(self) -> int:
        """Series submitted and not answered yet."""
        return len(self.scheduler.waiting) + len(self.live)

    def has_work(self) -> bool:
        return bool(self.scheduler.waiting or self.live)

    def run_until_idle(self, on_step: Callable[[StepStats], None] | None = None) -> None:
        while self.has_work():
            stats = self.step()
            if on_step:
                on_step(stats)

    def start(self) -> None:
        """Run steps in the engine's own thread whenever there is work."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="kronos-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.has_work() and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception:  # never let the loop die: later steps must still run
                log.exception("engine step failed", extra={"event": "engine_error"})

    # -- one step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> StepStats:
        started = time.perf_counter()
        now = time.monotonic()
        failed = self._drop_gone(now)
        with self._lock:
            plan = self.scheduler.plan(self.live, now)
        for seq in plan.admit:
            self._admit(seq)
        completed: list[Sequence] = []
        chunks_started = time.perf_counter()
        spent, failed_chunks = self._run_chunks(plan.chunks, plan.budget, completed,
                                                plan.leader, plan.lead_budget)
        self.scheduler.observe(spent, time.perf_counter() - chunks_started)
        failed += failed_chunks
        decoding = self.batch.decoding()
        decoded_rows = self.batch.n_rows
        if decoding:
            failed += self._decode(decoding, completed)
            # series whose last step was just decoded are answered now if the budget allows
            finished = [seq for seq in decoding if seq.phase == Phase.DETOKENIZE]
            spent, failed_chunks = self._run_chunks(finished, plan.budget, completed, spent=spent)
            failed += failed_chunks
        self.steps += 1
        stats = StepStats(seconds=time.perf_counter() - started, decoded_rows=decoded_rows,
                          decoded_series=len(decoding), live_rows=sum(s.paths for s in self.live),
                          live_series=len(self.live), chunk_tokens=spent,
                          urgent=plan.urgent is not None,
                          admitted=plan.admit, completed=completed, failed=failed,
                          waiting=self.waiting)
        if self.on_step:
            self.on_step(stats)
        return stats

    def _run_chunks(self, order: list[Sequence], budget: float, completed: list[Sequence],
                    leader: Sequence | None = None, lead_budget: float = 0,
                    spent: int = 0) -> tuple[int, int]:
        """Chunks of the series in ``order`` until ``budget`` is spent (at least one chunk).

        With ``lead_budget`` set, ``leader`` first runs chunks up to that budget; then the
        series in order run their chunks back to back while they fit. Returns the model-token
        equivalents spent and the number of series that failed."""
        failed = 0
        if leader is not None and lead_budget:
            spent, failed = self._series_chunks(leader, lead_budget, spent, completed)
        for seq in order:
            spent, failures = self._series_chunks(seq, budget, spent, completed)
            failed += failures
        return spent, failed

    def _series_chunks(self, seq: Sequence, budget: float, spent: int,
                       completed: list[Sequence]) -> tuple[int, int]:
        """``seq``'s chunks back to back while they fit in ``budget`` (one at least when nothing
        is spent yet), and at most one recomputed step of it."""
        while seq.phase in CHUNKED and not seq.future.done():
            cost = self.chunk_cost(seq)
            if spent and spent + cost > budget:
                break
            spent += cost
            recomputing = seq.phase == Phase.RECOMPUTE and seq.recompute is not None
            try:
                self._run_chunk(seq)
            except Exception as exc:
                return spent, self._fail(seq, exc)
            self._advance(seq, completed)
            if recomputing and seq.recompute is None:
                break
        return spent, 0

    def remaining_cost(self, seq: Sequence) -> int:
        """Model-token positions left of a live series (its cost estimate, from its progress)."""
        ex = self.executor
        return series_cost(seq.length, seq.horizon, seq.paths, ex.max_context, ex.sliding == "exact",
                           seq.steps_done, seq.prefilled)

    def chunk_cost(self, seq: Sequence) -> int:
        """Model-token equivalents of ``seq``'s next chunk (for the step budget)."""
        ex = self.executor
        if seq.phase == Phase.ENCODE:
            return max(1, int(seq.length * TOKENIZER_COST))
        if seq.phase == Phase.PREFILL:
            return min(ex.window(seq) - seq.prefilled, ex.chunk_tokens)
        if seq.phase == Phase.DETOKENIZE:
            return max(1, int(ex.detokenize_paths(seq) * ex.detokenize_window(seq) * TOKENIZER_COST))
        return ex.chunk_tokens  # a recomputation chunk: history chunk or paths x tokens per path

    def _admit(self, seq: Sequence) -> None:
        seq.admitted, seq.admitted_ns = time.monotonic(), time.time_ns()
        seq.generator = torch.Generator(device=self.device).manual_seed(seq.seed)
        prepared = seq.prepared
        seq.history_stamps = torch.from_numpy(prepared.history_stamps).to(self.device)
        seq.future_stamps = torch.from_numpy(prepared.future_stamps).to(self.device)
        seq.gen_s1 = torch.zeros(seq.paths, seq.horizon, dtype=torch.long, device=self.device)
        seq.gen_s2 = torch.zeros_like(seq.gen_s1)
        seq.phase = Phase.ENCODE
        self.live.append(seq)

    def _run_chunk(self, seq: Sequence) -> None:
        ex = self.executor
        if seq.phase == Phase.ENCODE:
            ex.encode(seq)
            seq.phase = Phase.PREFILL
            self.batch.add_series(seq, ex.window(seq))
        elif seq.phase == Phase.PREFILL:
            ex.prefill_chunk(seq, self.batch)
        elif seq.phase == Phase.RECOMPUTE:
            if seq.recompute is None:
                ex.start_recompute(seq)
            ex.recompute_chunk(seq)
        elif seq.phase == Phase.DETOKENIZE:
            ex.detokenize_chunk(seq)

    def _advance(self, seq: Sequence, completed: list[Sequence]) -> None:
        """Move ``seq`` on after a chunk: into the decode batch, to recomputation or to the end."""
        ex = self.executor
        if seq.phase == Phase.PREFILL and seq.steps_done == 1:
            if seq.steps_done == seq.horizon or ex.needs_recompute(seq):
                self.batch.remove_series(seq)
                self._after_step(seq)
            else:
                seq.phase = Phase.DECODE
                self.batch.add_rows(seq)
        elif seq.phase == Phase.RECOMPUTE and seq.recompute is None:
            self._after_step(seq)
        elif seq.phase == Phase.DETOKENIZE and seq.detokenized == seq.paths:
            self._finish(seq, completed)

    def _after_step(self, seq: Sequence) -> None:
        """A step outside the decode batch is done: next recomputation, or detokenize."""
        seq.phase = Phase.DETOKENIZE if seq.steps_done == seq.horizon else Phase.RECOMPUTE

    def _decode(self, decoding: list[Sequence], completed: list[Sequence]) -> int:
        """One decode position for every row. A series whose own sampling fails fails alone; a
        failure of the shared forward pass (e.g. out of memory) fails the series of this step."""
        try:
            failures = self.executor.decode_step(self.batch)
        except Exception as exc:
            log.exception("decode step failed", extra={"event": "decode_step_failed",
                                                       "series": len(decoding)})
            return sum(self._fail(seq, exc) for seq in decoding)
        failed = sum(self._fail(seq, exc) for seq, exc in failures)
        for seq in decoding:
            if seq.phase == Phase.DECODE and (seq.steps_done == seq.horizon
                                              or self.executor.needs_recompute(seq)):
                self.batch.remove_rows(seq)
                self.batch.remove_series(seq)
                self._after_step(seq)
        return failed

    def _finish(self, seq: Sequence, completed: list[Sequence]) -> None:
        seq.phase = Phase.DONE
        self.live.remove(seq)
        result = build_result(seq.prepared, seq.request, seq.paths_out, seq.seed)
        self._release_tensors(seq)
        seq.stamp_timing()
        if not seq.future.done():
            try:
                seq.future.set_result(result)
            except Exception:  # cancelled concurrently
                pass
        completed.append(seq)

    def _fail(self, seq: Sequence, exc: BaseException) -> int:
        """Fail one series: its rows and slot leave now; its caller gets ``exc``."""
        if seq in self.live:
            self.live.remove(seq)
        if any(owner is seq for owner, _ in self.batch.rows):
            self.batch.remove_rows(seq)
        if seq.slot is not None:
            self.batch.remove_series(seq)
        seq.phase = Phase.DONE
        self._release_tensors(seq)
        seq.stamp_timing()
        if not seq.future.done():
            try:
                seq.future.set_exception(exc)
            except Exception:
                pass
        if not isinstance(exc, (Cancelled, TimeoutError)):
            log.error("series failed", extra={"event": "series_failed", "error": f"{type(exc).__name__}: {exc}",
                                              "rows": seq.length, "pred_len": seq.horizon})
        return 1

    @staticmethod
    def _release_tensors(seq: Sequence) -> None:
        seq.recompute = None
        seq.history_s1 = seq.history_s2 = seq.gen_s1 = seq.gen_s2 = None

    def _drop_gone(self, now: float) -> int:
        """Cancelled or expired series leave now (waiting ones and live ones)."""
        dropped = 0
        with self._lock:
            waiting = []
            for seq in self.scheduler.waiting:
                reason = seq.gone(now)
                if reason is None:
                    waiting.append(seq)
                else:
                    dropped += self._fail(seq, reason)
            self.scheduler.waiting = waiting
        for seq in list(self.live):
            reason = seq.gone(now)
            if reason is not None:
                dropped += self._fail(seq, reason)
        return dropped
