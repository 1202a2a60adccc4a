"""Future timestamps follow the input's calendar: daily, 24/7, intraday sessions, exchanges."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import make_candles
from kronos_runtime import ForecastRequest, InputError, KronosForecaster
from kronos_runtime.calendars import continue_timestamps
from kronos_runtime.series import prepare_series


def stamps(*values: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(v) for v in values]


def intraday(days: pd.DatetimeIndex, first: str = "09:30", bars: int = 78) -> pd.DatetimeIndex:
    """5-minute bars from ``first`` on each day (78 bars: 09:30 to 15:55)."""
    start = pd.Timedelta(first + ":00")
    return pd.DatetimeIndex([d + start + pd.Timedelta(minutes=5 * i) for d in days for i in range(bars)])


def test_daily_weekday_data_continues_on_business_days():
    # Weekdays with a holiday (Thanksgiving) missing: pandas infers no frequency here.
    history = pd.bdate_range("2024-11-18", "2024-12-20").drop(pd.Timestamp("2024-11-28"))
    future, rule = continue_timestamps(history, 4)
    assert list(future) == stamps("2024-12-23", "2024-12-24", "2024-12-25", "2024-12-26")
    assert rule.to_dict() == {"rule": "business_days", "name": None, "session": None}


def test_exchange_calendar_skips_holidays():
    history = pd.bdate_range("2024-11-18", "2024-12-20").drop(pd.Timestamp("2024-11-28"))
    future, rule = continue_timestamps(history, 6, "XNYS")
    assert list(future) == stamps("2024-12-23", "2024-12-24", "2024-12-26", "2024-12-27",
                                  "2024-12-30", "2024-12-31")  # Christmas closed
    assert rule.rule == "exchange" and rule.name == "XNYS"
    new_year, _ = continue_timestamps(pd.bdate_range("2024-12-16", "2024-12-31"), 2, "xnys")
    assert list(new_year) == stamps("2025-01-02", "2025-01-03")


def test_daily_data_with_weekends_continues_every_day():
    history = pd.date_range("2024-01-01", periods=30, freq="D")  # crypto: trades on weekends
    future, rule = continue_timestamps(history, 3)
    assert list(future) == stamps("2024-01-31", "2024-02-01", "2024-02-02") and rule.rule == "continuous"
    weekend = continue_timestamps(pd.bdate_range("2024-11-18", "2024-12-20"), 2, "24/7")[0]
    assert list(weekend) == stamps("2024-12-21", "2024-12-22")  # asked for 24/7: weekends too


def test_intraday_24_7_data_runs_through_the_night():
    history = pd.date_range("2024-03-01 20:00", periods=48, freq="15min")
    future, rule = continue_timestamps(history, 3)
    assert list(future) == stamps("2024-03-02 08:00", "2024-03-02 08:15", "2024-03-02 08:30")
    assert rule.rule == "continuous"


def test_intraday_session_data_continues_the_next_trading_day():
    history = intraday(pd.bdate_range("2024-05-01", "2024-05-03"))  # Wed-Fri, 09:30-15:55
    history = history[:-2]  # ends Friday 15:45
    future, rule = continue_timestamps(history, 4)
    assert list(future) == stamps("2024-05-03 15:50", "2024-05-03 15:55", "2024-05-06 09:30",
                                  "2024-05-06 09:35")  # then Monday's open
    assert rule.to_dict() == {"rule": "session", "name": None, "session": "09:30-15:55"}


def test_intraday_exchange_session_follows_early_closes_and_holidays():
    history = intraday(pd.bdate_range("2024-12-19", "2024-12-23"))
    future, rule = continue_timestamps(history, 44, "XNYS")
    # Christmas Eve closes at 13:00 (last 5-minute bar 12:55), Christmas Day is closed.
    assert future[0] == pd.Timestamp("2024-12-24 09:30") and future[41] == pd.Timestamp("2024-12-24 12:55")
    assert list(future[42:]) == stamps("2024-12-26 09:30", "2024-12-26 09:35")
    assert rule.rule == "exchange"


def test_unknown_calendar_is_a_field_error():
    frame, times = make_candles(10, freq="1D", start="2024-01-02")
    with pytest.raises(InputError) as caught:
        prepare_series(frame, 3, times, calendar="NOPE")
    assert caught.value.field == "calendar"


def test_forecaster_uses_the_calendar_for_time_features(tiny_checkpoint):
    frame, times = make_candles(30, freq="B", start="2024-01-02")
    times = times.drop(index=10).reset_index(drop=True)  # a holiday: no pandas frequency
    frame = frame.drop(index=10).reset_index(drop=True)
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, max_context=64)
    prepared = forecaster.prepare(ForecastRequest(frame, 5, timestamps=times))
    assert prepared.calendar.rule == "business_days"
    assert (prepared.future_index.dayofweek < 5).all()
    assert (prepared.future_stamps[:, 2] < 5).all()  # the weekday feature the model sees
    given = forecaster.prepare(ForecastRequest(frame, 2, timestamps=times,
                                               future_timestamps=["2024-03-01", "2024-03-02"]))
    assert given.calendar.rule == "given"


def test_cli_forecast_follows_the_calendar(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    frame, times = make_candles(30, freq="B", start="2024-11-15")  # ends Thursday 2024-12-26
    frame.assign(timestamp=times).to_csv(tmp_path / "in.csv", index=False)
    command = [sys.executable, "-m", "kronos_runtime", "forecast", "--model", str(tiny_checkpoint[0]),
               "--tokenizer", str(tiny_checkpoint[1]), "--input", str(tmp_path / "in.csv"),
               "--pred-len", "4", "--calendar", "XNYS", "--max-context", "64", "--no-progress",
               "--output", str(tmp_path / "out.csv")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "calendar rule exchange XNYS" in done.stderr
    written = pd.read_csv(tmp_path / "out.csv")["timestamp"].str[:10].tolist()
    assert written == ["2024-12-27", "2024-12-30", "2024-12-31", "2025-01-02"]  # New Year closed
