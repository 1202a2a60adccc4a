"""The engine: continuous batching gives every request the result it gets alone, frees the rows
of cancelled, expired and failing series at the next step, bounds each step's work and admits
interactive work before background work."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from conftest import TEST_DEVICE, make_candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
from kronos_runtime.engine import Cancelled, EngineLimits, Priority
from kronos_runtime.engine.cost import series_cost
from kronos_runtime.engine.sequence import Phase
from kronos_serving.engine_client import EngineClient, QueueFull

GREEDY = SamplingParams(top_k=1)


@pytest.fixture(scope="module", params=["exact", "approximate"])
def forecaster(tiny_checkpoint, request):
    return KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=48,
                                            sliding=request.param)


def mixed_requests() -> list[ForecastRequest]:
    """Ragged lengths (some past the 48-token context), horizons that slide or not, greedy and
    seeded sampling with several paths, quantiles."""
    shapes = [(30, 5, GREEDY), (70, 9, SamplingParams(top_p=0.9, sample_count=3, seed=11)),
              (40, 20, SamplingParams(top_k=20, temperature=1.3, sample_count=2, seed=12)),
              (20, 12, SamplingParams(top_k=1, sample_count=2)), (45, 3, SamplingParams(seed=13)),
              (25, 30, SamplingParams(top_p=0.95, sample_count=4, seed=14))]
    requests = []
    for i, (rows, horizon, sampling) in enumerate(shapes):
        frame, stamps = make_candles(rows, seed=300 + i)
        requests.append(ForecastRequest(frame, horizon, timestamps=stamps, sampling=sampling,
                                        quantiles=[0.1, 0.9], return_samples=True))
    return requests


def test_staggered_admission_gives_the_result_of_running_alone(forecaster):
    """Requests join at different steps, mid-way through others' decoding, prefills and window
    recomputations, with small chunks: every result equals running it alone, number for number."""
    requests = mixed_requests()
    alone = [forecaster.forecast([r])[0] for r in requests]
    engine = forecaster.engine(EngineLimits(chunk_tokens=16, step_tokens=32))
    futures, arrivals = [], {0: [0, 1], 2: [2], 5: [3], 6: [4], 11: [5]}
    step = 0
    while engine.has_work() or step <= max(arrivals):
        for i in arrivals.get(step, []):
            futures.append((i, engine.submit(requests[i], forecaster.prepare(requests[i]))))
        engine.step()
        step += 1
    assert len(futures) == len(requests)
    for i, future in futures:
        together = future.result()
        np.testing.assert_array_equal(together.samples, alone[i].samples)
        np.testing.assert_array_equal(together.mean.to_numpy(), alone[i].mean.to_numpy())
        if requests[i].sampling.seed is not None:
            assert together.seed == alone[i].seed == requests[i].sampling.seed


def test_results_do_not_depend_on_what_shares_the_step(forecaster):
    """The same seeded request, alone and beside different company, gives identical numbers."""
    target = mixed_requests()[1]
    others = mixed_requests()
    first = forecaster.forecast([target])[0]
    crowded = forecaster.forecast([others[2], target, others[5], others[0]])[1]
    np.testing.assert_array_equal(crowded.samples, first.samples)


def long_request(rows=40, horizon=40, paths=2):
    frame, stamps = make_candles(rows, seed=7)
    return ForecastRequest(frame, horizon, timestamps=stamps,
                           sampling=SamplingParams(sample_count=paths, seed=1))


def short_request(seed=8):
    frame, stamps = make_candles(20, seed=seed)
    return ForecastRequest(frame, 3, timestamps=stamps, sampling=GREEDY)


def test_cancelled_and_expired_series_free_their_rows_at_the_next_step(forecaster):
    engine = forecaster.engine()
    cancelled_request = long_request()
    cancelled = engine.submit(cancelled_request, forecaster.prepare(cancelled_request))
    for _ in range(6):
        engine.step()
    assert engine.batch.n_rows == 2 or engine.live[0].phase.value == "recompute"
    cancelled.cancel()
    expired = engine.submit(long_request(), forecaster.prepare(long_request()),
                            deadline=time.monotonic() + 0.05)
    engine.step()
    # only the new series is left (admitted, encoded and prefilled in this very step)
    assert engine.batch.n_series <= 1 and engine.batch.n_rows <= 2 and cancelled.cancelled()
    assert all(seq.request is not cancelled_request for seq in engine.live)
    time.sleep(0.1)
    later = engine.submit(short_request(), forecaster.prepare(short_request()))
    engine.step()
    with pytest.raises(TimeoutError):
        expired.result(timeout=0)
    engine.run_until_idle()
    assert later.result().mean.shape == (3, 6)
    assert engine.batch.n_rows == 0 and engine.batch.n_series == 0 and not engine.live


def test_a_failing_series_fails_only_its_request(forecaster):
    requests = [short_request(1), long_request(), short_request(2), long_request(30, 12, 3)]
    alone = [forecaster.forecast([r])[0] for r in requests]
    engine = forecaster.engine()
    fail_in_prefill, fail_in_sampling = requests[1], requests[3]
    prefill, draw = engine.executor.prefill_chunk, engine.executor.draw

    def broken_prefill(seq, batch):
        if seq.request is fail_in_prefill:
            raise MemoryError("simulated: out of memory in this series' prefill")
        return prefill(seq, batch)

    def broken_draw(probabilities, seq):
        if seq.request is fail_in_sampling and seq.steps_done >= 4:
            raise RuntimeError("simulated: probability tensor contains nan")
        return draw(probabilities, seq)
    engine.executor.prefill_chunk, engine.executor.draw = broken_prefill, broken_draw
    futures = [engine.submit(r, forecaster.prepare(r)) for r in requests]
    engine.run_until_idle()
    with pytest.raises(MemoryError):
        futures[1].result()
    with pytest.raises(RuntimeError, match="nan"):
        futures[3].result()
    for i in (0, 2):
        np.testing.assert_array_equal(futures[i].result().samples, alone[i].samples)
    assert engine.batch.n_rows == 0 and not engine.live


def test_each_step_stays_within_its_token_budget_and_decoding_never_stalls(forecaster):
    engine = forecaster.engine(EngineLimits(chunk_tokens=8, step_tokens=16))
    decoding = engine.submit(long_request(20, 30, 1), forecaster.prepare(long_request(20, 30, 1)))
    while not engine.batch.n_rows:
        engine.step()
    seq = engine.live[0]
    big = long_request(48, 5, 4)  # a full window to prefill: 6 chunks of 8
    engine.submit(big, forecaster.prepare(big))
    budgets = []
    while engine.has_work():
        before = seq.steps_done
        stats = engine.step()
        budgets.append(stats.chunk_tokens)
        if seq in engine.batch.decoding() or stats.decoded_rows and seq.steps_done < seq.horizon:
            assert seq.steps_done in (before, before + 1)
    assert max(budgets) <= 16 and sum(budgets) >= 48
    assert decoding.result().mean.shape == (30, 6)


def test_steps_are_shorter_while_a_short_interactive_request_is_live(forecaster):
    """A big request's chunks fill ``step_tokens``; while a short interactive request is live
    (estimated cost <= ``short_cost``) steps run at most ``short_step_tokens`` of chunks; a short
    background request does not shorten them."""
    limits = EngineLimits(chunk_tokens=8, step_tokens=32, short_cost=100, short_step_tokens=8)
    engine = forecaster.engine(limits)
    big = long_request(48, 40, 4)
    engine.submit(big, forecaster.prepare(big))

    def run(steps: int, short=None, priority=Priority.INTERACTIVE) -> list[int]:
        future = engine.submit(short, forecaster.prepare(short), priority) if short else None
        spent = [engine.step().chunk_tokens for _ in range(steps)]
        if future is not None:
            while not future.done():
                spent.append(engine.step().chunk_tokens)
        return spent

    assert max(run(2)) > 8
    short = short_request()
    assert engine.live[0].cost > limits.short_cost
    with_short = run(0, short)
    assert max(with_short) <= 8 and len(with_short) >= 3
    assert max(run(0, short_request(seed=9), Priority.BACKGROUND)) > 8
    engine.run_until_idle()


def progress(seq) -> tuple:
    work = seq.recompute
    return (seq.prefilled, seq.steps_done, seq.detokenized,
            (work.history_done, work.generated_done) if work else None)


def test_big_work_leads_every_other_step_and_with_more_once_it_is_old(forecaster):
    """Short work keeps arriving (so steps have the short budget), yet the old big request's
    chunked work moves at least every other step; once it has been in the engine
    ``starvation_s`` its lead is ``step_tokens`` instead of one chunk."""
    limits = EngineLimits(chunk_tokens=8, step_tokens=32, short_cost=100, short_step_tokens=16,
                          starvation_s=60)
    engine = forecaster.engine(limits)
    big = long_request(48, 40, 4)
    engine.submit(big, forecaster.prepare(big))
    engine.step()
    oldest = engine.live[0]
    moved, submitted, answered = [], {}, {}
    for i in range(24):
        if i % 4 == 0:
            short = short_request(seed=20 + i)
            engine.submit(short, forecaster.prepare(short))
            submitted[id(short)] = i
        before = progress(oldest)
        stats = engine.step()
        answered.update((id(seq.request), i) for seq in stats.completed)
        moved.append(progress(oldest) != before)
    assert all(a or b for a, b in zip(moved, moved[1:])), moved
    # ... and short work is never stuck behind it: each short (3 steps) is answered within 8
    step = 24
    while len(answered) < len(submitted):
        answered.update((id(seq.request), step) for seq in engine.step().completed)
        step += 1
    assert all(answered[key] - at <= 8 for key, at in submitted.items()), (submitted, answered)
    leads = [engine.scheduler.lead_budget(oldest, time.monotonic()) for _ in range(4)]
    assert sorted(set(leads)) == [0, 8] and leads[0] != leads[1]  # one chunk
    oldest.submitted -= limits.starvation_s
    leads = [engine.scheduler.lead_budget(oldest, time.monotonic()) for _ in range(2)]
    assert sorted(leads) == [0, 32]
    engine.run_until_idle()


def test_a_medium_request_is_not_starved_by_a_stream_of_smaller_ones(forecaster):
    """Beside an old big request (which leads every other step), requests a little smaller than
    a medium one keep arriving, more than the steps can prefill. Shortest-first would prefill each
    newcomer ahead of the medium one forever; ordered by time waited for their size, the medium
    one is prefilled and answered within a bounded number of steps."""
    limits = EngineLimits(chunk_tokens=8, step_tokens=16, short_cost=40, short_step_tokens=16)
    engine = forecaster.engine(limits)
    big = long_request(48, 40, 4)
    engine.submit(big, forecaster.prepare(big))
    engine.step()
    medium_request = long_request(47, 1, 1)  # a window of 6 chunks
    medium = engine.submit(medium_request, forecaster.prepare(medium_request))
    newcomers = []
    for i in range(40):
        frame, stamps = make_candles(44, seed=400 + i)
        newer = ForecastRequest(frame, 1, timestamps=stamps, sampling=GREEDY)
        newcomers.append(engine.submit(newer, forecaster.prepare(newer)))
        engine.step()
        time.sleep(0.002)  # steps of a real model take time; waiting is measured in seconds
        if medium.done():
            break
    exact = forecaster.sliding == "exact"
    # both outside the short lane, the newcomers smaller
    assert limits.short_cost < series_cost(44, 1, 1, 48, exact) < series_cost(47, 1, 1, 48, exact)
    assert medium.done(), f"medium request still waiting after {i + 1} steps"
    assert i < 30 and medium.result().mean.shape == (1, 6)
    assert sum(not f.done() for f in newcomers) > 5  # the stream did outrun the steps
    engine.run_until_idle()


def test_the_cost_estimate_follows_progress():
    """The closed form equals the per-step sum it stands for, from any progress on."""
    def per_step(length, horizon, paths, context, exact, done, prefilled):
        cost = min(length, context) - prefilled + paths * (horizon - done)
        for step in range(max(1, context - length + 1, done), horizon) if exact else ():
            generated = min(step, context)
            cost += (context - generated) + paths * generated
        return int(cost + 0.1 * ((0 if prefilled or done else length) + paths * min(length + horizon, context)))
    rng = np.random.default_rng(3)
    for _ in range(3000):
        length, horizon, paths = (int(v) for v in rng.integers(1, [2100, 600, 33]))
        context, exact = int(rng.choice([48, 512, 2048])), bool(rng.random() < 0.7)
        done = int(rng.integers(0, horizon + 1))
        prefilled = min(length, context) if done else int(rng.integers(0, min(length, context) + 1))
        assert (series_cost(length, horizon, paths, context, exact, done, prefilled)
                == per_step(length, horizon, paths, context, exact, done, prefilled))
    assert series_cost(498, 120, 8, 512, True) > series_cost(498, 120, 8, 512, True, 60, 498) > 0


def test_a_series_near_its_deadline_runs_first_after_the_short_lane(tiny_checkpoint):
    """A big request whose deadline is nearer than ``deadline_margin`` times its remaining time
    alone (what is left of its cost at the measured speed) is urgent: its chunks run first in
    every step, ahead of an older big request that otherwise leads every other step, but after
    short requests. Deadlines are judged earliest first, each against its own work plus the work
    due before it, and the earliest is urgent; one that could not make it even alone is not."""
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE,
                                                  max_context=48, sliding="exact")
    limits = EngineLimits(chunk_tokens=8, step_tokens=32, short_cost=100, starvation_s=600,
                          deadline_margin=3, deadline_slack_s=0)
    engine = forecaster.engine(limits)
    old = long_request(48, 40, 4)
    engine.submit(old, forecaster.prepare(old))
    engine.step()
    late_request = long_request(46, 40, 2)
    engine.submit(late_request, forecaster.prepare(late_request), deadline=time.monotonic() + 100)
    engine.step()
    oldest, late = engine.live
    scheduler = engine.scheduler
    scheduler.observe = lambda tokens, seconds: None  # the speed is set by hand below
    ran: list = []
    run_chunk = engine._run_chunk
    engine._run_chunk = lambda seq: (ran.append(seq), run_chunk(seq))[1]

    def first_to_run(steps: int) -> list:
        firsts = []
        for _ in range(steps):
            ran.clear()
            stats = engine.step()
            firsts.append((ran[0] if ran else None, stats.urgent))
        return firsts

    # alone it would need a tenth of the time left: the oldest leads every other step
    scheduler.seconds_per_token = 100 / (10 * engine.remaining_cost(late))
    far = first_to_run(4)
    assert (oldest, False) in far and not any(lead for _, lead in far)
    # alone it would need half the time left (deadline_margin is 3): it is urgent every step
    scheduler.seconds_per_token = 100 / (2 * engine.remaining_cost(late))
    while late.phase != Phase.RECOMPUTE:  # its first steps after the prefill are decode steps
        engine.step()
    assert first_to_run(6) == [(late, True)] * 6
    # a short request's chunks still go first, and the urgent one's right after them
    short = short_request()
    answered = engine.submit(short, forecaster.prepare(short))
    ran.clear()
    assert engine.step().urgent and ran[0].request is short and late in ran
    assert ran.index(late) == max(i for i, seq in enumerate(ran) if seq.request is short) + 1
    while not answered.done():
        engine.step()
    # both at risk (each deadline between 1 and 3 times its time alone): the earlier one leads
    alone = {seq: engine.remaining_cost(seq) * scheduler.seconds_per_token for seq in (oldest, late)}
    now = time.monotonic()
    oldest.deadline, late.deadline = now + 1.2 * alone[oldest], now + 2.9 * alone[late]
    assert oldest.deadline < late.deadline
    assert first_to_run(2) == [(oldest, True)] * 2
    # each safe alone (4 times its own time), but the later deadline is nearer than 3 times
    # the work due before it: the earlier deadline leads
    alone = {seq: engine.remaining_cost(seq) * scheduler.seconds_per_token for seq in (oldest, late)}
    now = time.monotonic()
    oldest.deadline, late.deadline = now + 4 * alone[oldest], now + 4 * max(alone.values())
    assert late.deadline - now < 3 * sum(alone.values())
    assert first_to_run(2) == [(oldest, True)] * 2
    # alone it would need twice the time left: it cannot make it and does not take the lead
    oldest.deadline, late.deadline = None, time.monotonic() + 100
    scheduler.seconds_per_token = 100 / (0.5 * engine.remaining_cost(late))
    hopeless = first_to_run(4)
    assert (oldest, False) in hopeless and not any(lead for _, lead in hopeless)
    oldest.deadline = late.deadline = None
    engine.run_until_idle()
    assert not engine.live


def test_at_most_max_recomputing_series_hold_recomputation_buffers(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE,
                                                  max_context=48, sliding="exact")
    engine = forecaster.engine(EngineLimits(chunk_tokens=8, step_tokens=16, max_recomputing=2))
    futures = [engine.submit(r, forecaster.prepare(r))
               for r in (long_request(44, 12, paths) for paths in (1, 2, 3, 4))]
    most = 0
    while engine.has_work():
        engine.step()
        holding = sum(1 for seq in engine.live
                      if seq.recompute is not None and seq.recompute.buffers is not None)
        most = max(most, holding)
        assert holding <= 2
    assert most == 2 and all(f.result().mean.shape == (12, 6) for f in futures)


def test_interactive_work_is_admitted_before_background_work(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE)
    engine = forecaster.engine(EngineLimits(max_live_series=1))
    order = []
    futures = {}
    for name, priority in (("background-1", Priority.BACKGROUND), ("background-2", Priority.BACKGROUND),
                           ("interactive", Priority.INTERACTIVE)):
        request = short_request()
        futures[name] = engine.submit(request, forecaster.prepare(request), priority)
        futures[name].add_done_callback(lambda _, n=name: order.append(n))
    engine.run_until_idle()
    assert order == ["interactive", "background-1", "background-2"]


def test_background_work_leaves_room_and_does_not_starve(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE)
    engine = forecaster.engine(EngineLimits(max_live_rows=4, background_share=0.5))
    for _ in range(4):
        engine.submit(short_request(), forecaster.prepare(short_request()), Priority.BACKGROUND)
    engine.step()
    assert sum(s.paths for s in engine.live) == 2  # half the rows stay free for interactive work
    starving = forecaster.engine(EngineLimits(max_live_series=1, starvation_s=0.0))
    order = []
    for name, priority in (("background", Priority.BACKGROUND), ("interactive", Priority.INTERACTIVE)):
        future = starving.submit(short_request(), forecaster.prepare(short_request()), priority)
        future.add_done_callback(lambda _, n=name: order.append(n))
    starving.run_until_idle()
    assert order == ["background", "interactive"]  # waited past starvation_s: its turn came


def test_request_level_mode_admits_only_when_idle(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE)
    engine = forecaster.engine(EngineLimits(request_level=True))
    engine.submit(long_request(), forecaster.prepare(long_request()))
    engine.step()
    late = engine.submit(short_request(), forecaster.prepare(short_request()))
    while engine.live and not late.done():
        assert all(s.request.pred_len == 40 for s in engine.live)
        engine.step()
    engine.run_until_idle()
    assert late.result().mean.shape == (3, 6)


def test_the_client_bounds_the_queue_and_cancels_abandoned_series(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE)

    async def scenario():
        client = EngineClient(forecaster.engine(EngineLimits(max_live_series=1)), max_queue=2)
        items = [(r, forecaster.prepare(r)) for r in (long_request(40, 200, 1),) * 2]
        running = asyncio.create_task(client.submit(items))
        await asyncio.sleep(0.05)  # one series admitted, one waiting
        with pytest.raises(QueueFull):
            await client.submit(items)
        running.cancel()  # the caller gives up (504, client gone)
        with pytest.raises(asyncio.CancelledError):
            await running
        deadline = time.monotonic() + 10
        while client.engine.has_work() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not client.engine.has_work()  # nothing of it keeps running
        quick = await client.submit([(short_request(), forecaster.prepare(short_request()))])
        client.engine.stop()
        return quick

    assert asyncio.run(scenario())[0].mean.shape == (3, 6)
    assert Cancelled.__mro__[1] is Exception
