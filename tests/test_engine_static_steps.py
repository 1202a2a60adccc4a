"""Fixed-shape (CUDA-graphable) decode steps: padded buckets give the eager step's tokens.

On the CPU the fixed-shape step runs eagerly (``steps_mode="static"``); on a GPU
(``KRONOS_TEST_DEVICE=cuda``) the same tests also run it from captured CUDA graphs."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_DEVICE
from kronos_runtime import KronosForecaster
from kronos_runtime.engine import EngineLimits
from kronos_runtime.engine.static_step import CAPTURE_AFTER_USES, BucketShape, bucket_shape, row_cells
from test_engine import long_request, mixed_requests

MODES = ["static"] + (["graphs"] if TEST_DEVICE == "cuda" else [])


@pytest.fixture(scope="module", params=["exact", "approximate"])
def sliding(request):
    return request.param


def forecasters(checkpoint, sliding, mode):
    def load(steps_mode):
        return KronosForecaster.from_pretrained(*checkpoint, device=TEST_DEVICE, max_context=48,
                                                sliding=sliding, steps_mode=steps_mode)
    return load("eager"), load(mode)


def run_staggered(forecaster, requests, arrivals):
    """Submit requests at the given steps (small chunks) and return results in request order."""
    engine = forecaster.engine(EngineLimits(chunk_tokens=16, step_tokens=32))
    futures, step = {}, 0
    while engine.has_work() or step <= max(arrivals):
        for i in arrivals.get(step, []):
            futures[i] = engine.submit(requests[i], forecaster.prepare(requests[i]))
        engine.step()
        step += 1
    return [futures[i].result() for i in range(len(requests))], engine


@pytest.mark.parametrize("mode", MODES)
def test_fixed_shape_steps_give_the_eager_steps_tokens(tiny_checkpoint, sliding, mode):
    """Ragged series, 1-4 paths, greedy, top-k and top-p, windows that slide, arriving at
    different steps: the padded fixed-shape step (graphed on CUDA) gives the eager tokens."""
    eager, fixed = forecasters(tiny_checkpoint, sliding, mode)
    requests = mixed_requests()
    arrivals = {0: [0, 1], 2: [2], 5: [3], 6: [4], 11: [5]}
    expected, _ = run_staggered(eager, requests, arrivals)
    got, engine = run_staggered(fixed, requests, arrivals)
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have.samples, want.samples)
        np.testing.assert_allclose(have.mean.to_numpy(), want.mean.to_numpy(), rtol=1e-6)
    static = engine.executor.static
    assert static is not None and static.buckets, "the fixed-shape step was not used"
    shapes = list(static.buckets)
    assert any(shape.rows > 1 for shape in shapes)
    if mode == "graphs":
        assert static.captures >= 1


def test_buckets_are_reused_and_rebuilt_when_the_batch_buffers_grow(tiny_checkpoint):
    _, fixed = forecasters(tiny_checkpoint, "approximate", "static")
    engine = fixed.engine()
    first = long_request(rows=30, horizon=12, paths=2)
    engine.submit(first, fixed.prepare(first))
    while not engine.batch.n_rows:
        engine.step()
    static = engine.executor.static
    (shape, bucket), = static.buckets.items()
    assert shape == BucketShape(rows=2, series=1, paths=2)
    uses = bucket.uses
    for _ in range(CAPTURE_AFTER_USES):
        engine.step()
    assert list(static.buckets.values()) == [bucket]  # one bucket, used at every step
    assert bucket.uses == uses + CAPTURE_AFTER_USES
    # a bigger series arrives: the batch grows its buffers, so every old bucket is dropped
    more = long_request(rows=30, horizon=40, paths=4)
    engine.submit(more, fixed.prepare(more))
    engine.run_until_idle()
    assert all(b.own is not bucket.own for b in static.buckets.values())
    assert BucketShape(rows=8, series=2, paths=4) in static.buckets


def test_padded_rows_get_cells_no_real_row_uses(tiny_checkpoint):
    """Three series of 3, 1 and 2 paths (and a fourth still prefilling): 6 rows pad to 8, and the
    padded rows take free cells of the [series, paths] layout."""
    _, fixed = forecasters(tiny_checkpoint, "exact", "static")
    engine = fixed.engine(EngineLimits(chunk_tokens=16, step_tokens=16))
    shapes = [(20, 12, 3), (25, 12, 1), (30, 12, 2)]
    for rows, horizon, paths in shapes:
        request = long_request(rows=rows, horizon=horizon, paths=paths)
        engine.submit(request, fixed.prepare(request))
    while engine.batch.n_rows < 6:
        engine.step()
    waiting = long_request(rows=40, horizon=4, paths=2)
    engine.submit(waiting, fixed.prepare(waiting))
    batch = engine.batch
    while batch.n_series < 4:  # a slot, prefilling 16 positions a step: no rows yet
        engine.step()
    assert batch.n_rows == 6
    shape = bucket_shape(batch)
    assert shape.rows == 8 and shape.series == 4
    series, cells = row_cells(batch, shape)
    assert len(series) == shape.rows
    pairs = list(zip(series, cells))
    assert len(set(pairs)) == len(pairs)
    assert all(0 <= s < shape.series and 0 <= c < shape.paths for s, c in pairs)
    prefilling = next(seq for seq in batch.series if seq.request is waiting)
    real = {(seq.slot, path) for seq, path in batch.rows}
    reserved = {(prefilling.slot, c) for c in range(prefilling.paths)}
    assert not (set(pairs[6:]) & (real | reserved))
    engine.run_until_idle()
