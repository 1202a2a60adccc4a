"""Command line: ``python -m kronos_runtime forecast ...`` for batch jobs over CSV files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .errors import CheckpointError, InputError
from .forecaster import DTYPES, ForecastRequest, KronosForecaster
from .sampling import SamplingParams
from .series import ALL_COLUMNS


def read_input_csv(path: Path) -> tuple[pd.DataFrame, pd.Series | None]:
    """OHLCV columns (any capitalisation) and the ``timestamp`` column, else the first column."""
    frame = pd.read_csv(path)
    lowered = {c: str(c).strip().lower() for c in frame.columns}
    time_column = next((c for c, low in lowered.items() if low in ("timestamp", "timestamps",
                                                                  "date", "datetime", "time")), None)
    if time_column is None and lowered[frame.columns[0]] not in ALL_COLUMNS:
        time_column = frame.columns[0]
    timestamps = frame.pop(time_column) if time_column is not None else None
    return frame, timestamps


def parse_quantiles(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError("quantiles", f"expected comma-separated numbers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kronos_runtime",
                                     description="Kronos forecasts for candlestick CSV files.")
    commands = parser.add_subparsers(dest="command", required=True)
    fc = commands.add_parser("forecast", help="forecast one series from a CSV file")
    fc.add_argument("--model", required=True, help="model directory or hub id")
    fc.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id")
    fc.add_argument("--revision", help="hub revision of the model")
    fc.add_argument("--tokenizer-revision", help="hub revision of the tokenizer")
    fc.add_argument("--cache-dir", help="hub cache directory")
    fc.add_argument("--input", required=True, type=Path)
    fc.add_argument("--output", required=True, type=Path)
    fc.add_argument("--pred-len", required=True, type=int)
    fc.add_argument("--lookback", type=int, help="use only the last N input rows")
    fc.add_argument("--max-context", type=int, default=512)
    fc.add_argument("--temperature", type=float, default=1.0)
    fc.add_argument("--top-k", type=int, default=0)
    fc.add_argument("--top-p", type=float, default=0.9)
    fc.add_argument("--samples", type=int, default=1, help="sample paths to average")
    fc.add_argument("--seed", type=int)
    fc.add_argument("--quantiles", help="e.g. 0.1,0.5,0.9")
    fc.add_argument("--device", default="cpu")
    fc.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    fc.add_argument("--sliding", choices=["exact", "approximate"], default="exact",
                    help="after the window slides: recompute exactly, or keep the cache (faster)")
    fc.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def run_forecast(args: argparse.Namespace) -> None:
    data, timestamps = read_input_csv(args.input)
    forecaster = KronosForecaster.from_pretrained(
        args.model, args.tokenizer, device=args.device, dtype=args.dtype,
        max_context=args.max_context, revision=args.revision,
        tokenizer_revision=args.tokenizer_revision, cache_dir=args.cache_dir, sliding=args.sliding)
    request = ForecastRequest(
        data=data, pred_len=args.pred_len, lookback=args.lookback,
        timestamps=None if timestamps is None else timestamps.tolist(),
        sampling=SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                sample_count=args.samples, seed=args.seed),
        quantiles=parse_quantiles(args.quantiles))
    result = forecaster.forecast([request], progress=not args.no_progress)[0]
    frame = result.to_frame()
    frame.index.name = "timestamp"
    frame.to_csv(args.output)
    print(f"wrote {len(frame)} rows to {args.output} (seed {result.seed})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_forecast(args)
    except (InputError, CheckpointError, FileNotFoundError, pd.errors.ParserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
