"""Command line: ``python -m kronos_runtime forecast|backtest ...`` for batch jobs over CSV files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .backtest import BacktestSpec, load_series, run_backtest
from .backtest_files import write_report
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


def add_model_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """Checkpoint, device and sampling options shared by ``forecast`` and ``backtest``."""
    if several:
        parser.add_argument("--model", required=True, action="append",
                            help="[version=]model directory or hub id; repeat to compare versions")
        parser.add_argument("--tokenizer", required=True, action="append",
                            help="tokenizer directory or hub id (one for all, or one per --model)")
    else:
        parser.add_argument("--model", required=True, help="model directory or hub id")
        parser.add_argument("--tokenizer", required=True, help="tokenizer directory or hub id")
    parser.add_argument("--revision", help="hub revision of the model")
    parser.add_argument("--tokenizer-revision", help="hub revision of the tokenizer")
    parser.add_argument("--cache-dir", help="hub cache directory")
    parser.add_argument("--lookback", type=int, help="use only the last N input rows")
    parser.add_argument("--max-context", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--samples", type=int, default=1, help="sample paths to average")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--quantiles", help="e.g. 0.1,0.5,0.9")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--sliding", choices=["exact", "approximate"], default="exact",
                        help="after the window slides: recompute exactly, or keep the cache (faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kronos_runtime",
                                     description="Kronos forecasts for candlestick CSV files.")
    commands = parser.add_subparsers(dest="command", required=True)
    fc = commands.add_parser("forecast", help="forecast one series from a CSV file")
    add_model_arguments(fc)
    fc.add_argument("--input", required=True, type=Path)
    fc.add_argument("--output", required=True, type=Path)
    fc.add_argument("--pred-len", required=True, type=int)
    fc.add_argument("--calendar", help="future timestamps: auto (default), 24/7, business_days or "
                                       "an exchange code such as XNYS")
    bt = commands.add_parser("backtest", help="rolling-origin backtest against naive baselines")
    add_model_arguments(bt, several=True)
    bt.add_argument("--input", required=True, type=Path, action="append",
                    help="CSV file of one long series; repeat for several")
    bt.add_argument("--horizon", required=True, type=int, help="steps forecast per fold")
    bt.add_argument("--folds", type=int, default=5)
    bt.add_argument("--step", type=int, help="rows between fold origins (default: the horizon)")
    bt.add_argument("--season-period", type=int, help="seasonal naive period (default: from the "
                                                       "timestamps, e.g. 5 for weekday daily data)")
    bt.add_argument("--out", required=True, type=Path,
                    help="directory for backtest.json, folds.csv, metrics.csv, backtest.png")
    return parser


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          sample_count=args.samples, seed=args.seed)


def load_forecaster(args: argparse.Namespace, model: str, tokenizer: str) -> KronosForecaster:
    return KronosForecaster.from_pretrained(
        model, tokenizer, device=args.device, dtype=args.dtype, max_context=args.max_context,
        revision=args.revision, tokenizer_revision=args.tokenizer_revision,
        cache_dir=args.cache_dir, sliding=args.sliding)


def run_forecast(args: argparse.Namespace) -> None:
    data, timestamps = read_input_csv(args.input)
    forecaster = load_forecaster(args, args.model, args.tokenizer)
    request = ForecastRequest(
        data=data, pred_len=args.pred_len, lookback=args.lookback,
        timestamps=None if timestamps is None else timestamps.tolist(),
        sampling=sampling_params(args), quantiles=parse_quantiles(args.quantiles),
        calendar=args.calendar)
    prepared = forecaster.prepare(request)
    result = forecaster.forecast_prepared([prepared], [request], progress=not args.no_progress)[0]
    frame = result.to_frame()
    frame.index.name = "timestamp"
    frame.to_csv(args.output)
    rule = prepared.calendar.to_dict()
    print(f"wrote {len(frame)} rows to {args.output} (seed {result.seed}; calendar rule "
          f"{rule['rule']}{' ' + rule['name'] if rule['name'] else ''}"
          f"{' session ' + rule['session'] if rule['session'] else ''})", file=sys.stderr)


def model_versions(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """version name -> (model, tokenizer) from ``--model [version=]path`` and ``--tokenizer``."""
    if len(args.tokenizer) not in (1, len(args.model)):
        raise InputError("tokenizer", "give one --tokenizer for all models or one per --model")
    versions = {}
    for i, entry in enumerate(args.model):
        name, _, path = entry.rpartition("=")
        name = name or Path(path).name or path
        if name in versions:
            raise InputError("model", f"version name {name!r} given twice; use version=path")
        versions[name] = (path, args.tokenizer[i if len(args.tokenizer) > 1 else 0])
    return versions


def run_backtest_command(args: argparse.Namespace) -> None:
    inputs = [read_input_csv(path) for path in args.input]
    series = [load_series(data, None if stamps is None else stamps.tolist(), f"input[{i}]")
              for i, (data, stamps) in enumerate(inputs)]
    spec = BacktestSpec(horizon=args.horizon, folds=args.folds, step=args.step,
                        lookback=args.lookback or args.max_context, sampling=sampling_params(args),
                        quantiles=parse_quantiles(args.quantiles), season_period=args.season_period)
    forecasters = {name: load_forecaster(args, model, tokenizer)
                   for name, (model, tokenizer) in model_versions(args).items()}
    report = run_backtest(forecasters, series, spec, progress=not args.no_progress)
    history = pd.Series(series[0].values[:, 3], index=series[0].timestamps)
    paths = write_report(report, history, args.out)
    print(f"{len(report['folds'])} folds; wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    for model, per_column in report["metrics"].items():
        close = per_column["close"]
        print(f"{model:>24}  close MAE {close['mae']}  MASE {close['mase']}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "backtest":
            run_backtest_command(args)
        else:
            run_forecast(args)
    except (InputError, CheckpointError, FileNotFoundError, pd.errors.ParserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
