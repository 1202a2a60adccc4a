"""Rolling-origin backtests: fold plan, folds equal direct forecasts, baselines, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, make_candles
from kronos_runtime import ForecastRequest, InputError, KronosForecaster, SamplingParams
from kronos_runtime.backtest import BacktestSpec, load_series, plan_folds, run_backtest
from kronos_runtime.quality import mae

SAMPLING = SamplingParams(temperature=0.9, top_p=0.8, sample_count=3, seed=11)


@pytest.fixture(scope="module")
def forecaster(tiny_checkpoint):
    return KronosForecaster.from_pretrained(*tiny_checkpoint, max_context=64)


def origin_row(fold: dict, series: list) -> int:
    """Index of the fold's first forecast row in its series (one past its origin)."""
    stamps = series[fold["series"]][1]
    return int(np.flatnonzero(stamps == pd.Timestamp(fold["origin"]))[0]) + 1


def test_fold_origins_end_with_the_series():
    frame, stamps = make_candles(50)
    folds = plan_folds([load_series(frame, stamps)], BacktestSpec(horizon=5, folds=3, step=4))
    assert [f.origin for f in folds] == [37, 41, 45]
    assert folds[-1].timestamps[-1] == stamps.iloc[-1] and len(folds[0].history) == 37
    np.testing.assert_array_equal(folds[1].actual[:, 3], frame["close"].to_numpy()[41:46])
    with pytest.raises(InputError, match="folds"):
        plan_folds([load_series(frame, stamps)], BacktestSpec(horizon=20, folds=3))


def test_backtest_folds_equal_direct_forecasts_with_the_same_seed(forecaster):
    series = [make_candles(70, seed=4), make_candles(55, seed=5)]
    spec = BacktestSpec(horizon=4, folds=3, step=2, lookback=40, sampling=SAMPLING,
                        quantiles=[0.1, 0.9], season_period=3)
    report = run_backtest({"tiny": forecaster}, [load_series(f, s) for f, s in series], spec)
    assert len(report["folds"]) == 6
    for fold in report["folds"]:
        frame, stamps = series[fold["series"]]
        origin = origin_row(fold, series)
        direct = forecaster.forecast([ForecastRequest(
            frame.iloc[:origin], 4, timestamps=stamps.iloc[:origin], lookback=40, sampling=SAMPLING,
            quantiles=[0.1, 0.9], future_timestamps=stamps.iloc[origin:origin + 4])])[0]
        np.testing.assert_allclose(fold["forecast"]["close"], direct.mean["close"], rtol=1e-5)
        np.testing.assert_allclose(fold["quantiles"]["0.9"]["high"], direct.quantiles[0.9]["high"],
                                   rtol=1e-5)
        np.testing.assert_allclose(fold["actual"]["close"], frame["close"].iloc[origin:origin + 4])
        assert fold["seed"] == 11 and fold["timestamps"][0] == stamps.iloc[origin].isoformat()

    metrics = report["metrics"]
    assert set(metrics) == {"tiny", "naive", "seasonal_naive"}
    close = metrics["tiny"]["close"]
    assert {"mae", "rmse", "mape", "smape", "mase", "direction_accuracy", "coverage",
            "pinball_loss", "crps"} <= set(close) and close["count"] == 24
    forecast = np.concatenate([f["forecast"]["close"] for f in report["folds"]])
    actual = np.concatenate([f["actual"]["close"] for f in report["folds"]])
    assert close["mae"] == pytest.approx(mae(actual, forecast))
    last_closes = [series[f["series"]][0]["close"].iloc[origin_row(f, series) - 1]
                   for f in report["folds"]]
    naive_close = np.repeat(last_closes, 4)  # the naive forecast: the last close, 4 times
    assert metrics["naive"]["close"]["mae"] == pytest.approx(mae(actual, naive_close))
    assert "crps" not in metrics["naive"]["close"] and report["config"]["season_periods"] == [3, 3]


def test_backtest_cli_writes_json_csv_and_chart(tiny_checkpoint, tmp_path):
    command = [sys.executable, "-m", "kronos_runtime", "backtest",
               "--model", f"v1={tiny_checkpoint[0]}", "--model", f"v2={tiny_checkpoint[0]}",
               "--tokenizer", str(tiny_checkpoint[1]), "--input", str(ROOT / "examples/prices.csv"),
               "--horizon", "6", "--folds", "3", "--lookback", "48", "--max-context", "64",
               "--samples", "2", "--seed", "3", "--quantiles", "0.1,0.9", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "forecast: 100%" in done.stderr  # the progress bar
    report = json.loads((tmp_path / "backtest.json").read_text())
    assert set(report["metrics"]) == {"v1", "v2", "naive", "seasonal_naive"}
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 2 * 3 * 6 and {"actual_close", "close", "model_version"} <= set(folds.columns)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert set(metrics["model"]) == {"v1", "v2", "naive", "seasonal_naive"} and "crps" in metrics
    assert (tmp_path / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
