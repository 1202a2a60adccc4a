"""Shared fixtures: generated dev checkpoints, synthetic candles and the reference oracle."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # local_server: real `bentoml serve` processes

from kronos_runtime.dev_checkpoint import write_pair  # noqa: E402

# Runtime tests run on this device (both ours and the reference): `KRONOS_TEST_DEVICE=cuda` on a GPU.
TEST_DEVICE = os.environ.get("KRONOS_TEST_DEVICE", "cpu")


def make_candles(rows: int, seed: int = 0, volume: bool = True, amount: bool = False,
                 freq: str = "5min", start: str = "2024-03-01 09:30") -> tuple[pd.DataFrame, pd.Series]:
    """A random-walk OHLCV frame and its timestamps."""
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(scale=0.5, size=rows))
    opening = close + rng.normal(scale=0.2, size=rows)
    frame = pd.DataFrame({"open": opening, "high": np.maximum(opening, close) + rng.uniform(0, 1, rows),
                          "low": np.minimum(opening, close) - rng.uniform(0, 1, rows), "close": close})
    if volume:
        frame["volume"] = rng.uniform(1e3, 5e3, rows)
    if amount:
        frame["amount"] = frame["volume"] * close
    stamps = pd.Series(pd.date_range(start, periods=rows, freq=freq))
    return frame, stamps


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    return write_pair(tmp_path_factory.mktemp("tiny"), "tiny", seed=3)


@pytest.fixture(scope="session")
def mini_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    return write_pair(tmp_path_factory.mktemp("mini"), "mini", seed=5)


def reference_forecast(checkpoint: tuple[Path, Path], frame: pd.DataFrame, stamps: pd.Series,
                       future: pd.Series, pred_len: int, max_context: int,
                       sample_count: int = 1) -> pd.DataFrame:
    """Greedy forecast of the reference package (the oracle), models in eval mode."""
    from model import Kronos, KronosPredictor, KronosTokenizer

    model = Kronos.from_pretrained(str(checkpoint[0])).eval()
    tokenizer = KronosTokenizer.from_pretrained(str(checkpoint[1])).eval()
    predictor = KronosPredictor(model, tokenizer, device=TEST_DEVICE, max_context=max_context)
    return predictor.predict(frame, stamps, future, pred_len, T=1.0, top_k=1, top_p=1.0,
                             sample_count=sample_count, verbose=False)


def score_one_outcome(server, series_id: str = "obs") -> None:
    """A forecast with a series id and its actual candle (a close inside the forecast's
    interval): the live-accuracy series (error, covered intervals) appear."""
    rows = [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]]
    body = {"data": rows, "timestamps": ["2024-01-01", "2024-01-02", "2024-01-03"], "pred_len": 1,
            "series_id": series_id, "quantiles": [0.1, 0.9], "sample_count": 2}
    response = httpx.post(server.url + "/v1/predict/single", json=body, timeout=60)
    assert response.status_code == 200
    bands = response.json()["quantiles"]
    close = (bands["0.1"][0]["close"] + bands["0.9"][0]["close"]) / 2
    candle = [close, max(close, 10.9), min(close, 10.2), close]
    outcome = {"series_id": series_id, "timestamps": ["2024-01-04"], "data": [candle]}
    for _ in range(100):  # the forecast record is written off the request path
        scored = httpx.post(server.url + "/v1/outcomes", json=outcome, timeout=30).json()
        if scored["forecasts"]:
            return
        time.sleep(0.1)
    raise AssertionError("the forecast was never recorded")
