"""The batch CLI: CSV in, CSV out, same numbers as the API."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from conftest import ROOT, make_candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams


def test_cli_forecast_writes_mean_and_quantiles(tiny_checkpoint, tmp_path):
    frame, stamps = make_candles(40, seed=12)
    csv = frame.rename(columns=str.capitalize).assign(Timestamp=stamps)
    csv.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "kronos_runtime", "forecast", "--model", str(tiny_checkpoint[0]),
               "--tokenizer", str(tiny_checkpoint[1]), "--input", str(tmp_path / "in.csv"),
               "--pred-len", "6", "--lookback", "32", "--max-context", "64", "--samples", "4",
               "--seed", "9", "--temperature", "0.9", "--top-p", "0.8", "--quantiles", "0.1,0.5,0.9",
               "--device", "cpu", "--output", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out)
    assert list(written.columns[:7]) == ["timestamp", "open", "high", "low", "close", "volume", "amount"]
    assert "close_q0.1" in written.columns and "amount_q0.9" in written.columns
    assert len(written) == 6
    expected = KronosForecaster.from_pretrained(*tiny_checkpoint, max_context=64).forecast([
        ForecastRequest(frame, 6, timestamps=stamps, lookback=32, quantiles=[0.1, 0.5, 0.9],
                        sampling=SamplingParams(temperature=0.9, top_p=0.8, sample_count=4, seed=9))])[0]
    np.testing.assert_allclose(written["close"], expected.mean["close"], rtol=1e-5)
    np.testing.assert_allclose(written["close_q0.9"], expected.quantiles[0.9]["close"], rtol=1e-5)


def test_cli_reports_bad_input_without_a_traceback(tiny_checkpoint, tmp_path):
    frame, stamps = make_candles(10)
    frame.assign(timestamp=stamps, price=1).to_csv(tmp_path / "in.csv", index=False)
    command = [sys.executable, "-m", "kronos_runtime", "forecast", "--model", str(tiny_checkpoint[0]),
               "--tokenizer", str(tiny_checkpoint[1]), "--input", str(tmp_path / "in.csv"),
               "--pred-len", "3", "--output", str(tmp_path / "out.csv")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "columns" in done.stderr and "Traceback" not in done.stderr
