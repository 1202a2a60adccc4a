"""Bad inputs are rejected with an InputError naming the field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TEST_DEVICE, make_candles
from kronos_runtime import ForecastRequest, InputError, KronosForecaster, SamplingParams
from kronos_runtime.series import time_features


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint):
    return KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE, max_context=64)


def rejects(forecaster, field, request):
    with pytest.raises(InputError) as error:
        forecaster.forecast([request])
    assert error.value.field == field, str(error.value)
    return str(error.value)


def test_nan_and_inf_are_rejected(forecaster):
    frame, stamps = make_candles(20)
    frame.loc[5, "close"] = np.nan
    message = rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))
    assert "row 5" in message and "close" in message
    frame, stamps = make_candles(20)
    frame.loc[2, "volume"] = np.inf
    rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))


def test_strings_are_rejected(forecaster):
    frame, stamps = make_candles(20)
    frame["open"] = frame["open"].astype(object)
    frame.loc[3, "open"] = "abc"
    rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))


def test_non_increasing_timestamps_are_rejected(forecaster):
    frame, stamps = make_candles(20)
    stamps.iloc[10] = stamps.iloc[9]
    assert "position 10" in rejects(forecaster, "timestamps",
                                    ForecastRequest(frame, 3, timestamps=stamps))


def test_too_short_input_is_rejected(forecaster):
    frame, stamps = make_candles(1)
    rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))


def test_unknown_and_missing_columns_are_rejected(forecaster):
    frame, stamps = make_candles(20)
    assert "price" in rejects(forecaster, "columns",
                              ForecastRequest(frame.assign(price=1.0), 3, timestamps=stamps))
    rejects(forecaster, "columns", ForecastRequest(frame.drop(columns="low"), 3, timestamps=stamps))


def test_column_names_are_case_insensitive(forecaster):
    frame, stamps = make_candles(20)
    upper = frame.rename(columns=str.upper)
    a, b = forecaster.forecast([
        ForecastRequest(upper, 3, timestamps=stamps, sampling=SamplingParams(top_k=1)),
        ForecastRequest(frame, 3, timestamps=stamps, sampling=SamplingParams(top_k=1))])
    np.testing.assert_allclose(a.mean.to_numpy(), b.mean.to_numpy())


@pytest.mark.parametrize("field,request_change", [
    ("pred_len", dict(pred_len=0)),
    ("timestamps", dict(timestamps=["not a date"] * 20)),
    ("future_timestamps", dict(future_timestamps=["2030-01-01"])),
    ("temperature", dict(sampling=SamplingParams(temperature=0))),
    ("top_p", dict(sampling=SamplingParams(top_p=1.5))),
    ("top_k", dict(sampling=SamplingParams(top_k=-1))),
    ("sample_count", dict(sampling=SamplingParams(sample_count=0))),
    ("seed", dict(sampling=SamplingParams(seed=2 ** 64 + 1))),
    ("seed", dict(sampling=SamplingParams(seed=-1))),
    ("quantiles", dict(quantiles=[0.5, 1.0])),
    ("lookback", dict(lookback=1)),
])
def test_bad_parameters_name_their_field(forecaster, field, request_change):
    frame, stamps = make_candles(20)
    request = dict(data=frame, pred_len=3, timestamps=stamps)
    request.update(request_change)
    rejects(forecaster, field, ForecastRequest(**request))


def test_future_timestamps_must_follow_the_input(forecaster):
    frame, stamps = make_candles(20)
    rejects(forecaster, "future_timestamps",
            ForecastRequest(frame, 2, timestamps=stamps, future_timestamps=list(stamps.iloc[:2])))


def test_missing_timestamps_get_a_deterministic_default(forecaster):
    frame, _ = make_candles(20)
    request = ForecastRequest(frame, 3, sampling=SamplingParams(top_k=1))
    a, b = forecaster.forecast([request]), forecaster.forecast([request])
    assert a[0].mean.equals(b[0].mean)
    assert len(a[0].mean) == 3


def test_inverted_candles_and_absurd_magnitudes_are_rejected(forecaster):
    frame, stamps = make_candles(20)
    frame.loc[7, ["high", "low"]] = frame.loc[7, ["low", "high"]].to_numpy().copy()
    assert "row 7" in rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))
    frame, stamps = make_candles(20)
    frame.loc[4, "volume"] = 1e200
    message = rejects(forecaster, "data", ForecastRequest(frame, 3, timestamps=stamps))
    assert "row 4" in message and "volume" in message and "magnitude" in message


def test_forecast_timestamps_past_the_supported_range_are_rejected(forecaster):
    frame, _ = make_candles(20)
    stamps = [f"2262-03-{day:02d}" for day in range(1, 21)]
    assert "range" in rejects(forecaster, "timestamps", ForecastRequest(frame, 60, timestamps=stamps))


def test_time_features_equal_pandas_accessors_across_centuries():
    rng = np.random.default_rng(0)
    stamps = rng.integers(pd.Timestamp("1900-01-01").value, pd.Timestamp("2200-01-01").value, 5000)
    index = pd.DatetimeIndex(np.sort(stamps)).append(pd.date_range("1969-12-31 22:00", periods=300,
                                                                    freq="7min"))
    expected = np.stack([index.minute, index.hour, index.weekday, index.day, index.month], axis=1)
    np.testing.assert_array_equal(time_features(index), expected)
    np.testing.assert_array_equal(time_features(index.as_unit("s")), expected)  # any resolution
