"""Forecast metrics and baselines against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kronos_runtime import InputError
from kronos_runtime.quality import (column_metrics, coverage, crps_from_samples, direction_accuracy,
                                    mae, mape, mase, naive, pinball_loss, rmse, seasonal_naive, smape)
from kronos_runtime.quality.metrics import interval_coverage, naive_scale

ACTUAL = np.array([10.0, 12.0, 8.0, 10.0])
FORECAST = np.array([11.0, 11.0, 10.0, 10.0])  # errors -1, 1, -2, 0


def test_point_metrics_by_hand():
    assert mae(ACTUAL, FORECAST) == pytest.approx(1.0)                  # (1+1+2+0)/4
    assert rmse(ACTUAL, FORECAST) == pytest.approx(math.sqrt(6 / 4))    # (1+1+4+0)/4
    assert mape(ACTUAL, FORECAST) == pytest.approx(100 * (0.1 + 1 / 12 + 0.25 + 0) / 4)
    assert smape(ACTUAL, FORECAST) == pytest.approx(100 * (2 / 21 + 2 / 23 + 4 / 18 + 0) / 4)


def test_mape_and_smape_skip_zero_denominators():
    assert mape(np.array([0.0, 4.0]), np.array([1.0, 5.0])) == pytest.approx(25.0)
    assert smape(np.array([0.0, 4.0]), np.array([0.0, 4.0])) == pytest.approx(0.0)
    assert math.isnan(mape(np.array([0.0]), np.array([1.0])))


def test_mase_scales_by_in_sample_naive_error():
    history = np.array([1.0, 3.0, 2.0, 6.0])  # naive errors 2, 1, 4 -> scale 7/3
    assert naive_scale(history) == pytest.approx(7 / 3)
    assert naive_scale(history, period=2) == pytest.approx((1 + 3) / 2)  # |2-1|, |6-3|
    assert mase(ACTUAL, FORECAST, naive_scale(history)) == pytest.approx(1.0 / (7 / 3))
    # Per-fold scales, pooled over points: (1/1 + 1/1 + 2/2 + 0/2) / 4
    assert mase(ACTUAL, FORECAST, np.array([1.0, 1.0, 2.0, 2.0])) == pytest.approx(0.75)
    assert math.isnan(mase(ACTUAL, FORECAST, 0.0))  # a flat history has no scale


def test_direction_accuracy_against_the_last_observed_value():
    # Last value 10: actual moves up, up, down, flat; forecast up, up, flat, flat -> 3 of 4.
    assert direction_accuracy(np.array([11, 12, 9, 10.0]), np.array([10.5, 13, 10, 10.0]),
                              10.0) == pytest.approx(0.75)
    assert direction_accuracy(np.array([11.0, 9.0]), np.array([10.0, 10.0]), 10.0) == 0.0


def test_quantile_metrics_by_hand():
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    low, high = np.array([0.5, 2.5, 2.5, 4.5]), np.array([1.5, 3.0, 3.5, 5.0])
    assert coverage(actual, low) == pytest.approx(0.5)     # 2.0 <= 2.5 and 4.0 <= 4.5
    assert coverage(actual, high) == pytest.approx(1.0)
    assert interval_coverage(actual, low, high) == pytest.approx(0.5)  # 1.0 and 3.0 inside
    # q=0.1: errors 0.5, -0.5, 0.5, -0.5 -> losses 0.05, 0.45, 0.05, 0.45 -> 0.25
    # q=0.9: errors -0.5, -1, -0.5, -1 -> losses 0.05, 0.1, 0.05, 0.1 -> 0.075
    assert pinball_loss(actual, {0.1: low, 0.9: high}) == pytest.approx((0.25 + 0.075) / 2)


def test_crps_from_samples_by_hand():
    # Samples {0, 2}, actual 1: E|X-a| = 1, E|X-X'| = (0+2+2+0)/4 = 1 -> CRPS 0.5.
    assert crps_from_samples(np.array([1.0]), np.array([[0.0], [2.0]])) == pytest.approx(0.5)
    # One sample: CRPS is the absolute error.
    assert crps_from_samples(np.array([3.0, 1.0]), np.array([[1.0, 1.5]])) == pytest.approx(1.25)
    rng = np.random.default_rng(0)
    samples, actual = rng.normal(size=(7, 5)), rng.normal(size=5)
    brute = np.mean(np.abs(samples - actual), axis=0) - 0.5 * np.mean(
        np.abs(samples[:, None] - samples[None, :]), axis=(0, 1))
    assert crps_from_samples(actual, samples) == pytest.approx(brute.mean())


def test_column_metrics_adds_probabilistic_metrics_when_given():
    point = column_metrics(ACTUAL, FORECAST, last=np.full(4, 10.0), scale=np.ones(4))
    assert set(point) == {"count", "mae", "rmse", "mape", "smape", "mase", "direction_accuracy"}
    assert point["count"] == 4 and point["mase"] == pytest.approx(1.0)
    full = column_metrics(ACTUAL, FORECAST, np.full(4, 10.0), np.ones(4),
                          quantiles={0.1: FORECAST - 1, 0.9: FORECAST + 1},
                          samples=np.stack([FORECAST - 1, FORECAST + 1]))
    # Lower bounds 10, 10, 9, 9 (10 and 8 at or below); upper 12, 12, 11, 11 (all); 8 is outside.
    assert full["coverage"] == {"0.1": pytest.approx(0.5), "0.9": pytest.approx(1.0)}
    assert full["interval"] == [0.1, 0.9] and full["interval_coverage"] == pytest.approx(0.75)
    assert full["crps"] == pytest.approx(crps_from_samples(ACTUAL, np.stack([FORECAST - 1,
                                                                             FORECAST + 1])))


def test_baselines():
    history = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    np.testing.assert_array_equal(naive(history, 2), [[3.0, 30.0], [3.0, 30.0]])
    np.testing.assert_array_equal(seasonal_naive(history, 5, period=2),
                                  [[2.0, 20.0], [3.0, 30.0], [2.0, 20.0], [3.0, 30.0], [2.0, 20.0]])
    np.testing.assert_array_equal(seasonal_naive(history, 2, period=1), naive(history, 2))
    with pytest.raises(InputError, match="season_period"):
        seasonal_naive(history, 2, period=4)
