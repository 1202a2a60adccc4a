"""Live accuracy in the store: outcomes matched to recorded forecasts (SQLite and a real PostgreSQL)."""
from __future__ import annotations

import pandas as pd
import pytest

from kronos_serving.accuracy import accuracy_metrics
from kronos_serving.schemas import SingleRequest
from kronos_serving.settings import Settings
from kronos_serving.store import Forecast, Store
from kronos_serving.store.records import rows_of
from kronos_serving.store.schema import ForecastRecord, ForecastScore, Outcome
from local_postgres import postgres_bin, running_postgres

HISTORY = {"data": [[9.0, 10.0, 8.0, 9.0], [9.0, 11.0, 8.5, 10.0], [10.0, 12.0, 9.0, 12.0]],
           "timestamps": ["2024-01-01", "2024-01-02", "2024-01-03"], "pred_len": 3}
STAMPS = ["2024-01-04T00:00:00", "2024-01-05T00:00:00", "2024-01-06T00:00:00"]


def result(closes: list[float], version: str) -> dict:
    rows = [{"timestamp": t, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 0.0,
             "amount": 0.0} for t, c in zip(STAMPS, closes)]
    band = {level: [dict(r, close=r["close"] + shift) for r in rows]
            for level, shift in (("0.1", -1.0), ("0.9", 1.0))}
    return {"predictions": rows, "quantiles": band, "model_version": version, "model": "m",
            "device": "cpu", "seed": 1}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        settings = Settings(data_dir=str(tmp_path))
        yield Store(settings)
        return
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: run `make system-deps`")
    with running_postgres() as server:
        yield Store(Settings(store_url=server.url))


def record(store: Store, series_id: str | None, closes: list[float], version: str) -> None:
    body = SingleRequest(**HISTORY, series_id=series_id)
    forecast = Forecast("req", "/v1/predict/single", "", [body], [result(closes, version)], 200, 1.0)
    store.records.insert(rows_of(forecast, store.settings, store_inputs=False))


def test_outcomes_score_each_forecast_step_once(store):
    assert store.ready(), store.error
    record(store, "AAPL", [13.0, 14.0, 15.0], "v1")
    record(store, "AAPL", [12.0, 12.0, 12.0], "v2")
    record(store, "MSFT", [13.0, 14.0, 15.0], "v1")   # another series
    record(store, None, [13.0, 14.0, 15.0], "v1")     # no series id: not scored
    candle = {"open": 12.0, "high": 14.0, "low": 11.0, "close": 13.5}

    first = store.outcomes.add("AAPL", pd.DatetimeIndex([STAMPS[0]]), [candle])
    assert first["new_outcomes"] == 1 and first["forecasts"] == 2
    assert sorted((s["model_version"], s["step"]) for s in first["scored"]) == [("v1", 1), ("v2", 1)]
    # Repeated (day 1 again) and partial (day 2 of 3) arrivals: only the new step is scored.
    again = store.outcomes.add("AAPL", pd.DatetimeIndex(STAMPS[:2]),
                               [dict(candle, close=99.0), dict(candle, close=16.0)])
    assert again["new_outcomes"] == 1
    assert sorted((s["model_version"], s["step"]) for s in again["scored"]) == [("v1", 2), ("v2", 2)]
    assert store.outcomes.add("AAPL", pd.DatetimeIndex(STAMPS[:2]), [candle, candle])["scored"] == []

    scores = store.outcomes.scores("v1", None)
    assert sorted(s["step"] for s in scores) == [1, 2]
    step1 = next(s for s in scores if s["step"] == 1)["values"]
    assert step1["actual"]["close"] == 13.5  # the first arrival counts, not the repeat (99)
    assert step1["last"]["close"] == 12.0 and step1["scale"]["close"] == pytest.approx(1.5)
    assert "volume" not in step1["actual"]  # the outcome had no volume: not scored

    metrics = accuracy_metrics(store.outcomes.scores(None, None))
    v1, v2 = metrics["v1"]["close"], metrics["v2"]["close"]
    assert v1["count"] == 2 and v1["mae"] == pytest.approx((0.5 + 2.0) / 2)  # |13-13.5|, |14-16|
    assert v2["mae"] == pytest.approx((1.5 + 4.0) / 2)
    assert v1["mase"] == pytest.approx((0.5 / 1.5 + 2.0 / 1.5) / 2)
    assert v1["direction_accuracy"] == 1.0 and v2["direction_accuracy"] == 0.0  # flat vs up
    assert v1["interval_coverage"] == pytest.approx(0.5)  # 13.5 in [12, 14]; 16 not in [13, 15]
    assert store.outcomes.scores("v1", pd.Timestamp("2100-01-01").to_pydatetime()) == []
    with store.engine.begin() as connection:
        for table in (ForecastScore, Outcome, ForecastRecord):
            connection.execute(table.__table__.delete())
    store.engine.dispose()


def test_retention_deletes_old_outcomes_and_scores(tmp_path):
    store = Store(Settings(data_dir=str(tmp_path), retention_days=1))
    assert store.ready(), store.error
    record(store, "AAPL", [13.0, 14.0, 15.0], "v1")
    candle = {"open": 12.0, "high": 14.0, "low": 11.0, "close": 13.5}
    store.outcomes.add("AAPL", pd.DatetimeIndex([STAMPS[0]]), [candle])
    store.cleanup()  # nothing is a day old yet
    assert len(store.outcomes.scores(None, None)) == 1
    store.outcomes.delete_before(pd.Timestamp("2100-01-01").to_pydatetime())
    assert store.outcomes.scores(None, None) == []
    assert store.outcomes.add("AAPL", pd.DatetimeIndex([STAMPS[0]]), [candle])["new_outcomes"] == 1
