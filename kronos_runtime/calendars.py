"""Future timestamps that follow the input's calendar.

Rules (``CalendarRule.rule``):
- ``continuous``: the input's step continued without gaps (24/7 markets, weekly or monthly data);
- ``business_days``: daily bars on Monday to Friday;
- ``session``: intraday bars within the input's trading session (first to last bar time of day
  seen in the input), then the next trading day (weekdays unless the input trades on weekends);
- ``exchange``: the sessions of a named exchange calendar (``exchange_calendars``, e.g. ``XNYS``):
  holidays skipped, intraday bars within each session's open and close (early closes included;
  naive intraday timestamps are read as the exchange's local time; lunch breaks are not modelled);
- ``given``: the caller sent the future timestamps.

``calendar`` (request field / ``--calendar``): ``auto`` (default: inferred from the timestamps),
``24/7``, ``business_days`` or an exchange code.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import InputError

DAY = pd.Timedelta(days=1)
MAX_CLOSED_DAYS = 30  # more closed days in a row: the calendar has ended (or has no sessions)


@dataclass(frozen=True)
class CalendarRule:
    """How future timestamps were made, as reported in responses."""

    rule: str
    name: str | None = None                       # the exchange code for ``exchange``
    session: tuple[pd.Timedelta, pd.Timedelta] | None = None  # first/last bar time of day

    def to_dict(self) -> dict[str, Any]:
        def clock(offset: pd.Timedelta) -> str:
            minutes = int(offset.total_seconds() // 60)
            return f"{minutes // 60:02d}:{minutes % 60:02d}"
        session = f"{clock(self.session[0])}-{clock(self.session[1])}" if self.session else None
        return {"rule": self.rule, "name": self.name, "session": session}


GIVEN = CalendarRule("given")
CONTINUOUS = CalendarRule("continuous")


def usual_step(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The most common gap between consecutive timestamps."""
    values, counts = np.unique(np.diff(index.asi8), return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")


def continue_step(index: pd.DatetimeIndex, periods: int, every_day: bool = False
                  ) -> pd.DatetimeIndex:
    """``periods`` timestamps after ``index`` at its step (pandas frequency, else the usual gap);
    ``every_day`` ignores business-day frequencies (a 24/7 market was asked for)."""
    freq = pd.infer_freq(index) if len(index) >= 3 else None
    if freq is not None and not (every_day and freq.startswith(("B", "C"))):
        return pd.date_range(start=index[-1], periods=periods + 1, freq=freq)[1:]
    step = usual_step(index)
    return pd.DatetimeIndex([index[-1] + step * (i + 1) for i in range(periods)])


def weekdays(index: pd.DatetimeIndex) -> np.ndarray:
    """Monday = 0 ... Sunday = 6."""
    return (index.values.astype("datetime64[D]").astype(np.int64) + 3) % 7


def trades_on_weekends(index: pd.DatetimeIndex) -> bool:
    return bool((weekdays(index) >= 5).any())


def spans_a_weekend(index: pd.DatetimeIndex) -> bool:
    return index[-1].normalize() - index[0].normalize() >= pd.Timedelta(days=6)


def time_of_day(index: pd.DatetimeIndex) -> pd.TimedeltaIndex:
    return index - index.normalize()


def has_session_breaks(index: pd.DatetimeIndex, step: pd.Timedelta) -> bool:
    """Intraday data with gaps longer than its step across a day change (markets closed overnight)."""
    gaps = np.diff(index.asi8)
    new_day = np.diff(index.normalize().asi8) > 0
    return bool(((gaps > step.value) & new_day).any())


def business_days(index: pd.DatetimeIndex, periods: int) -> pd.DatetimeIndex:
    return pd.date_range(start=index[-1], periods=periods + 1, freq="B")[1:]


def session_bars(last: pd.Timestamp, periods: int, step: pd.Timedelta,
                 bounds: Callable[[pd.Timestamp], tuple[pd.Timedelta, pd.Timedelta] | None]
                 ) -> pd.DatetimeIndex:
    """Bars every ``step`` within each day's (first bar, last bar) time-of-day bounds; days whose
    bounds are None are not trading days and are skipped."""
    out: list[pd.Timestamp] = []
    current = last
    while len(out) < periods:
        day = current.normalize()
        candidate = current + step
        day_bounds = bounds(day)
        if day_bounds and candidate.normalize() == day and candidate - day <= day_bounds[1]:
            current = candidate
        else:
            current = next_session_start(day, bounds)
        out.append(current)
    return pd.DatetimeIndex(out)


def next_session_start(day: pd.Timestamp,
                       bounds: Callable[[pd.Timestamp], tuple[pd.Timedelta, pd.Timedelta] | None]
                       ) -> pd.Timestamp:
    """The first bar of the first trading day after ``day``."""
    for _ in range(MAX_CLOSED_DAYS):
        day += DAY
        if (day_bounds := bounds(day)) is not None:
            return day + day_bounds[0]
    raise InputError("calendar", f"no trading session within {MAX_CLOSED_DAYS} days after "
                                 f"{day.date()} (past the calendar's end?)")


def inferred_session(index: pd.DatetimeIndex, periods: int, step: pd.Timedelta,
                     weekdays_only: bool) -> tuple[pd.DatetimeIndex, CalendarRule]:
    clock = time_of_day(index)
    session = (clock.min(), clock.max())

    def bounds(day: pd.Timestamp) -> tuple[pd.Timedelta, pd.Timedelta] | None:
        return None if weekdays_only and day.dayofweek >= 5 else session
    return session_bars(index[-1], periods, step, bounds), CalendarRule("session", session=session)


@lru_cache(maxsize=16)
def exchange_calendar(name: str, start_year: int, end_year: int):
    """An ``exchange_calendars`` calendar covering the given years (built once, then cached)."""
    import exchange_calendars

    try:
        return exchange_calendars.get_calendar(name, start=f"{start_year}-01-01",
                                               end=f"{end_year}-12-31")
    except exchange_calendars.errors.InvalidCalendarName:
        raise InputError("calendar", f"unknown calendar {name!r}; use auto, 24/7, business_days or "
                                     "an exchange code such as XNYS") from None
    except ValueError as exc:  # outside the years the calendar supports
        raise InputError("calendar", f"{name}: {exc}") from None


def exchange_timestamps(index: pd.DatetimeIndex, periods: int, step: pd.Timedelta,
                        name: str) -> tuple[pd.DatetimeIndex, CalendarRule]:
    last = index[-1]
    days_needed = periods if step < DAY else periods * 2 * max(1, step // DAY)
    calendar = exchange_calendar(name, last.year, (last + pd.Timedelta(days=days_needed + 30)).year)
    sessions = calendar.sessions
    rule = CalendarRule("exchange", name=name)
    if step >= DAY:
        following = sessions[sessions > last.normalize()][:periods]
        if len(following) < periods:
            raise InputError("calendar", f"{name} has {len(following)} sessions after "
                                         f"{last.date()}, {periods} needed")
        return following + (last - last.normalize()), rule
    opens = calendar.schedule["open"].dt.tz_convert(calendar.tz).dt.tz_localize(None)
    closes = calendar.schedule["close"].dt.tz_convert(calendar.tz).dt.tz_localize(None)
    # Bars labelled by their end reach the close; bars labelled by their start stop a step before.
    last_day = last.normalize()
    close_clock = (closes[last_day] - last_day) if last_day in closes.index else None
    phase = step if close_clock is not None and time_of_day(index).max() >= close_clock else pd.Timedelta(0)

    def bounds(day: pd.Timestamp) -> tuple[pd.Timedelta, pd.Timedelta] | None:
        if day not in opens.index:
            return None
        return opens[day] - day + phase, closes[day] - day - step + phase
    return session_bars(last, periods, step, bounds), rule


def continue_timestamps(index: pd.DatetimeIndex, periods: int, calendar: str | None = None
                        ) -> tuple[pd.DatetimeIndex, CalendarRule]:
    """``periods`` future timestamps after ``index`` and the rule that made them."""
    name = (calendar or "").strip() or "auto"
    if name.lower() == "24/7" or len(index) < 2:
        return continue_step(index, periods, every_day=True), CONTINUOUS
    step = usual_step(index)
    weekdays_only = not trades_on_weekends(index)
    if name.lower() in ("auto", "business_days"):
        asked = name.lower() == "business_days"
        if step == DAY and weekdays_only and (asked or spans_a_weekend(index)):
            return business_days(index, periods), CalendarRule("business_days")
        if step < DAY and (asked or has_session_breaks(index, step)):
            return inferred_session(index, periods, step, weekdays_only or asked)
        return continue_step(index, periods), CONTINUOUS
    return exchange_timestamps(index, periods, step, name.upper())

