"""Greedy forecasts must equal the reference implementation's on the same weights."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TEST_DEVICE, make_candles, reference_forecast
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams

GREEDY = SamplingParams(top_k=1)


def future_after(stamps: pd.Series, count: int, freq: str = "5min") -> pd.Series:
    return pd.Series(pd.date_range(stamps.iloc[-1] + pd.Timedelta(freq), periods=count, freq=freq))


def assert_matches(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    scale = np.abs(reference.to_numpy()).max(axis=0) + 1e-6
    np.testing.assert_allclose(ours.to_numpy() / scale, reference.to_numpy() / scale, atol=1e-5)


@pytest.mark.parametrize("rows,pred_len,max_context", [
    (60, 20, 512),   # within the context: KV cache only
    (50, 40, 64),    # the window slides during generation
    (100, 12, 64),   # the input alone is longer than the context
    (64, 1, 64),     # one step, window exactly full
])
def test_greedy_matches_reference(tiny_checkpoint, rows, pred_len, max_context):
    frame, stamps = make_candles(rows, seed=rows)
    future = future_after(stamps, pred_len)
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=max_context)
    ours = forecaster.forecast([ForecastRequest(frame, pred_len, timestamps=stamps,
                                                future_timestamps=future, sampling=GREEDY)])[0]
    reference = reference_forecast(tiny_checkpoint, frame, stamps, future, pred_len, max_context)
    assert list(ours.mean.index) == list(reference.index)
    assert_matches(ours.mean, reference)


@pytest.mark.parametrize("volume,amount", [(False, False), (True, False), (True, True)])
def test_volume_and_amount_handling_matches_reference(tiny_checkpoint, volume, amount):
    frame, stamps = make_candles(40, seed=7, volume=volume, amount=amount)
    future = future_after(stamps, 10)
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=32)
    ours = forecaster.forecast([ForecastRequest(frame, 10, timestamps=stamps,
                                                future_timestamps=future, sampling=GREEDY)])[0]
    assert_matches(ours.mean, reference_forecast(tiny_checkpoint, frame, stamps, future, 10, 32))


def test_mini_shape_with_sample_paths_matches_reference(mini_checkpoint):
    frame, stamps = make_candles(80, seed=11)
    future = future_after(stamps, 16)
    forecaster = KronosForecaster.from_pretrained(*mini_checkpoint, device=TEST_DEVICE, max_context=88)
    request = ForecastRequest(frame, 16, timestamps=stamps, future_timestamps=future,
                              sampling=SamplingParams(top_k=1, sample_count=3))
    ours = forecaster.forecast([request])[0]
    reference = reference_forecast(mini_checkpoint, frame, stamps, future, 16, 88, sample_count=3)
    assert_matches(ours.mean, reference)


# Horizons and sampling of a ragged batch: greedy, top-p with 4 paths, top-k, greedy 2 paths.
RAGGED = [(5, GREEDY),
          (25, SamplingParams(temperature=0.8, top_p=0.9, sample_count=4, seed=1)),
          (12, SamplingParams(temperature=1.2, top_k=20, sample_count=2, seed=2)),
          (40, SamplingParams(top_k=1, sample_count=2))]


def ragged_requests(lengths: list[int], data_seed: int, **options) -> list[ForecastRequest]:
    """One request per ``RAGGED`` entry, on series of ``lengths`` rows, returning samples."""
    requests = []
    for i, (rows, (horizon, sampling)) in enumerate(zip(lengths, RAGGED)):
        frame, stamps = make_candles(rows, seed=data_seed + i)
        requests.append(ForecastRequest(frame, horizon, timestamps=stamps, sampling=sampling,
                                        return_samples=True, **options))
    return requests


def test_models_are_in_eval_mode(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE)
    assert not forecaster.model.training and not forecaster.tokenizer.training


def test_ragged_batch_equals_single_runs(tiny_checkpoint):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=48)
    requests = ragged_requests([30, 70, 45, 20], data_seed=100, quantiles=[0.1, 0.9])
    batched = forecaster.forecast(requests)
    for request, together in zip(requests, batched):
        alone = forecaster.forecast([request])[0]
        assert together.mean.shape == (request.pred_len, 6)
        np.testing.assert_allclose(together.samples, alone.samples, rtol=1e-4, atol=1e-4)
        pd.testing.assert_frame_equal(together.mean, alone.mean, rtol=1e-4)


def test_approximate_sliding_is_exact_until_the_window_slides(tiny_checkpoint):
    frame, stamps = make_candles(40, seed=21)
    request = ForecastRequest(frame, 30, timestamps=stamps, sampling=GREEDY)
    exact = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=50).forecast([request])[0]
    approx = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=50,
                                              sliding="approximate").forecast([request])[0]
    # Steps 0..10 see at most 50 tokens: identical. Later steps may differ but stay finite.
    np.testing.assert_allclose(approx.mean.to_numpy()[:11], exact.mean.to_numpy()[:11], rtol=1e-5)
    assert np.isfinite(approx.mean.to_numpy()).all()
