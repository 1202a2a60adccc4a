"""Sampling: seeds, quantiles, sample paths and future timestamps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TEST_DEVICE, make_candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
from kronos_runtime.sampling import filter_logits


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint):
    return KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=64)


def sampled(frame, stamps, seed, **extra):
    params = dict(temperature=1.0, top_p=0.95, sample_count=8, seed=seed)
    params.update(extra)
    return ForecastRequest(frame, 10, timestamps=stamps, sampling=SamplingParams(**params),
                           quantiles=[0.9, 0.1, 0.5], return_samples=True)


def test_seed_reproduces_and_different_seeds_differ(forecaster):
    frame, stamps = make_candles(50, seed=1)
    first = forecaster.forecast([sampled(frame, stamps, 42)])[0]
    again = forecaster.forecast([sampled(frame, stamps, 42)])[0]
    other = forecaster.forecast([sampled(frame, stamps, 43)])[0]
    np.testing.assert_array_equal(first.samples, again.samples)
    assert first.seed == 42
    assert not np.allclose(first.samples, other.samples)


def test_unseeded_result_reports_a_seed_that_reproduces_it(forecaster):
    frame, stamps = make_candles(50, seed=2)
    request = sampled(frame, stamps, None)
    result = forecaster.forecast([request])[0]
    replay = forecaster.forecast([sampled(frame, stamps, result.seed)])[0]
    np.testing.assert_array_equal(result.samples, replay.samples)


def test_quantiles_are_ordered_and_mean_is_path_average(forecaster):
    frame, stamps = make_candles(50, seed=3)
    result = forecaster.forecast([sampled(frame, stamps, 7)])[0]
    assert sorted(result.quantiles) == [0.1, 0.5, 0.9]
    low, mid, high = (result.quantiles[q].to_numpy() for q in (0.1, 0.5, 0.9))
    assert (low <= mid + 1e-6).all() and (mid <= high + 1e-6).all()
    assert (low < high).any(), "8 sampled paths should spread"
    assert result.samples.shape == (8, 10, 6)
    np.testing.assert_allclose(result.mean.to_numpy(), result.samples.mean(axis=0), rtol=1e-4,
                               atol=1e-3)
    columns = result.to_frame().columns
    assert "close_q0.1" in columns and "volume_q0.9" in columns


def test_greedy_paths_are_identical(forecaster):
    frame, stamps = make_candles(40, seed=4)
    result = forecaster.forecast([sampled(frame, stamps, 1, top_k=1)])[0]
    assert np.allclose(result.samples, result.samples[0:1])


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0], [1.0, 5.0, 0.0, 0.0]])
    filtered = filter_logits(logits, torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.7, 1.0]))
    assert torch.isinf(filtered[0, 2:]).all() and torch.isfinite(filtered[0, :2]).all()
    # softmax([4,3,2,1]) = .64,.24,.09,.03: the nucleus for 0.7 keeps the first two
    assert torch.isfinite(filtered[1, :2]).all() and torch.isinf(filtered[1, 2:]).all()
    assert torch.equal(filtered[2], logits[2])


def test_future_timestamps_continue_the_input_step(forecaster):
    frame, stamps = make_candles(30, seed=5, freq="15min")
    result = forecaster.forecast([ForecastRequest(frame, 4, timestamps=stamps)])[0]
    expected = pd.date_range(stamps.iloc[-1] + pd.Timedelta("15min"), periods=4, freq="15min")
    assert list(result.mean.index) == list(expected)
    business, days = make_candles(30, seed=6, freq="B", start="2024-01-01")
    result = forecaster.forecast([ForecastRequest(business, 3, timestamps=days)])[0]
    assert all(ts.weekday() < 5 for ts in result.mean.index)


def test_given_future_timestamps_are_used(forecaster):
    frame, stamps = make_candles(30, seed=8)
    future = pd.date_range("2030-01-01", periods=5, freq="h")
    result = forecaster.forecast([ForecastRequest(frame, 5, timestamps=stamps,
                                                  future_timestamps=future)])[0]
    assert list(result.mean.index) == list(future)


def test_lookback_uses_only_the_last_rows(forecaster):
    frame, stamps = make_candles(80, seed=9)
    short = ForecastRequest(frame, 5, timestamps=stamps, lookback=30, sampling=SamplingParams(top_k=1))
    tail = ForecastRequest(frame.iloc[-30:].reset_index(drop=True), 5, timestamps=stamps.iloc[-30:],
                           sampling=SamplingParams(top_k=1))
    a, b = forecaster.forecast([short, tail])
    pd.testing.assert_frame_equal(a.mean, b.mean)
    assert a.history_rows == 30
