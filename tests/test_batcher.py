"""The adaptive batcher: a failure inside one batch fails only its requests; the next batch works."""
from __future__ import annotations

import asyncio

import pytest

from conftest import make_candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
from kronos_serving.batcher import Batcher, QueueFull


class FailsOnLongHorizons(KronosForecaster):
    """The real forecaster, failing (like an out-of-memory) on any batch with a horizon over 5."""

    def forecast_prepared(self, prepared, requests):
        if any(r.pred_len > 5 for r in requests):
            raise MemoryError("simulated: out of memory in this batch")
        return super().forecast_prepared(prepared, requests)


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint):
    return FailsOnLongHorizons.from_pretrained(*tiny_checkpoint, max_context=64)


def job(forecaster, pred_len, seed=0):
    frame, stamps = make_candles(30, seed=seed)
    request = ForecastRequest(frame, pred_len, timestamps=stamps, sampling=SamplingParams(top_k=1))
    return request, forecaster.prepare(request)


def test_a_failing_batch_fails_only_its_requests(forecaster):
    stats = []
    batcher = Batcher(forecaster, max_series=2, max_wait_s=0, on_batch=stats.append)

    async def scenario():
        first = [batcher.submit([job(forecaster, 3, 1)]), batcher.submit([job(forecaster, 9, 2)])]
        second = [batcher.submit([job(forecaster, 2, 3)]), batcher.submit([job(forecaster, 4, 4)])]
        tasks = [asyncio.create_task(c) for c in first + second]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        after = await batcher.submit([job(forecaster, 4, 5)])
        return results, after

    results, after = asyncio.run(scenario())
    assert [type(r).__name__ for r in results] == ["MemoryError", "MemoryError", "list", "list"]
    assert "out of memory" in str(results[0])
    assert [len(r[0].mean) for r in results[2:]] == [2, 4] and len(after[0].mean) == 4
    assert [(s.series, s.failed) for s in stats] == [(2, True), (2, False), (1, False)]


def test_the_queue_is_bounded(forecaster):
    batcher = Batcher(forecaster, max_series=1, max_wait_s=0, max_queue=2)

    async def scenario():
        running = asyncio.create_task(batcher.submit([job(forecaster, 3)] * 2))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([job(forecaster, 3)])
        await running
        return await batcher.submit([job(forecaster, 3)])  # room again once drained

    assert len(asyncio.run(scenario())[0].mean) == 3
