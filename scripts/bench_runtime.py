#!/usr/bin/env python
"""Reference predictor vs our runtime: same random weights, same data, one run each.

Prints seconds per forecast and the speed-up ratio against the reference measured in the same
run, plus how far each of our modes is from the reference's greedy forecast.

Example (the README numbers): python scripts/bench_runtime.py --shape small --lookback 400 \
    --horizon 120 --paths 1 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams  # noqa: E402
from kronos_runtime.dev_checkpoint import MAX_CONTEXT, MODEL_SHAPES, write_pair  # noqa: E402


def candles(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(scale=0.5, size=rows))
    frame = pd.DataFrame({"open": close + rng.normal(scale=0.2, size=rows), "high": close + 1,
                          "low": close - 1, "close": close, "volume": rng.uniform(1e3, 5e3, rows)})
    return frame, pd.Series(pd.date_range("2024-01-02 09:30", periods=rows, freq="5min"))


def timed(device: str, work):
    """Seconds of ``work()`` (device work finished) and its result."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def reference_seconds(checkpoint, frame, stamps, future, horizon, max_context, paths, device):
    from model import Kronos, KronosPredictor, KronosTokenizer

    model = Kronos.from_pretrained(str(checkpoint[0])).eval()
    tokenizer = KronosTokenizer.from_pretrained(str(checkpoint[1])).eval()
    predictor = KronosPredictor(model, tokenizer, device=device, max_context=max_context)
    predictor.predict(frame.iloc[:16], stamps.iloc[:16], future.iloc[:2], 2, top_k=1,
                      verbose=False)  # warm-up (kernel setup), as for ours
    seconds, out = timed(device, lambda: predictor.predict(
        frame, stamps, future, horizon, T=1.0, top_k=1, top_p=1.0, sample_count=paths,
        verbose=False))
    return seconds, out.to_numpy()


def load_ours(checkpoint, max_context, sliding, dtype, steps_mode, device) -> KronosForecaster:
    forecaster = KronosForecaster.from_pretrained(*checkpoint, max_context=max_context,
                                                  sliding=sliding, dtype=dtype, device=device,
                                                  steps_mode=steps_mode)
    frame, stamps = candles(16)
    forecaster.forecast([ForecastRequest(frame, 2, timestamps=stamps)])  # warm-up
    return forecaster


def ours_seconds(forecaster, frame, stamps, future, horizon, paths):
    request = ForecastRequest(frame, horizon, timestamps=stamps, future_timestamps=future,
                              sampling=SamplingParams(top_k=1, sample_count=paths))
    seconds, out = timed(str(forecaster.device), lambda: forecaster.forecast([request])[0])
    return seconds, out.mean.to_numpy()


def batch_seconds(forecaster, frame, stamps, horizon, series: int) -> float:
    """Seconds for one ragged call of ``series`` different series (one path each, greedy)."""
    requests = [ForecastRequest(candles(len(frame), seed=i)[0], horizon, timestamps=stamps,
                                sampling=SamplingParams(top_k=1)) for i in range(series)]
    return timed(str(forecaster.device), lambda: forecaster.forecast(requests))[0]


def relative_deviation(ours: np.ndarray, reference: np.ndarray) -> float:
    scale = np.abs(reference).max(axis=0) + 1e-9
    return float(np.abs((ours - reference) / scale).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(MODEL_SHAPES), default="small")
    parser.add_argument("--lookback", type=int, default=400)
    parser.add_argument("--horizon", type=int, default=120)
    parser.add_argument("--max-context", type=int, help="default: the shape's context")
    parser.add_argument("--paths", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=["exact", "approximate"],
                        help="sliding modes, optionally with a dtype and decode steps mode: exact "
                             "approximate:bfloat16 exact:float32:eager (default: graphs on cuda)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both implementations)")
    parser.add_argument("--batch", type=int, nargs="*", default=[],
                        help="also time ours on one call of N different series (forecasts/s)")
    parser.add_argument("--no-reference", action="store_true", help="time ours only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    max_context = args.max_context or MAX_CONTEXT[args.shape]
    frame, stamps = candles(args.lookback)
    future = pd.Series(pd.date_range(stamps.iloc[-1] + pd.Timedelta("5min"), periods=args.horizon,
                                     freq="5min"))
    print(f"shape={args.shape} lookback={args.lookback} horizon={args.horizon} "
          f"max_context={max_context} threads={args.threads} device={args.device} "
          f"torch={torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_pair(Path(tmp), args.shape, seed=0)
        ours = {mode: load_ours(checkpoint, max_context, *parse_mode(mode), args.device)
                for mode in args.modes}
        for paths in args.paths:
            ref_s, ref_out = (None, None) if args.no_reference else reference_seconds(
                checkpoint, frame, stamps, future, args.horizon, max_context, paths, args.device)
            if ref_s is not None:
                print(f"paths={paths} reference: {ref_s:.2f} s")
            for mode, forecaster in ours.items():
                ours_s, ours_out = ours_seconds(forecaster, frame, stamps, future, args.horizon, paths)
                line = f"paths={paths} ours[{mode}]: {ours_s:.3f} s"
                if ref_s is not None:
                    line += (f"  ratio {ref_s / ours_s:.1f}x  max relative deviation from reference "
                             f"{relative_deviation(ours_out, ref_out):.2e}")
                print(line)
        for series in args.batch:
            for mode, forecaster in ours.items():
                seconds = batch_seconds(forecaster, frame, stamps, args.horizon, series)
                print(f"batch={series} ours[{mode}]: {seconds:.3f} s  {series / seconds:.2f} forecasts/s")


def parse_mode(mode: str) -> tuple[str, str, str | None]:
    """'approximate:bfloat16[:eager]' -> ('approximate', 'bfloat16', 'eager')."""
    sliding, dtype, steps_mode = (mode.split(":") + ["", ""])[:3]
    return sliding, dtype or "float32", steps_mode or None


if __name__ == "__main__":
    main()
