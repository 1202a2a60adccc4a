#!/usr/bin/env python
"""One request alone through today's runtime (the engine) and through the runtime as of
``bench_engine.BEFORE_COMMIT`` (before the engine), same random checkpoint, same data.

Each side runs in its own subprocess (each imports its own ``kronos_runtime``) and prints
seconds per forecast after a warm-up; the ratio is engine / before, measured in the same run.

Example (the README numbers): python scripts/bench_before.py --shapes 498x120x8 400x120x1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_engine import BEFORE_COMMIT, source_before  # noqa: E402
from bench_runtime import candles  # noqa: E402

ONE_FORECAST = """
import json, sys, time
import pandas as pd
import torch
sys.path.insert(0, {tree!r})
import kronos_runtime
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
torch.set_num_threads({threads})
forecaster = KronosForecaster.from_pretrained({model!r}, {tokenizer!r}, max_context=512)
frame, stamps = pd.read_pickle({data!r})
sampling = SamplingParams(top_k=1) if {paths} == 1 else SamplingParams(sample_count={paths}, seed=1)
forecaster.forecast([ForecastRequest(frame.tail(64), 4, timestamps=stamps.tail(64))])  # warm-up
started = time.perf_counter()
forecaster.forecast([ForecastRequest(frame, {horizon}, timestamps=stamps, sampling=sampling)])
print(json.dumps([time.perf_counter() - started, kronos_runtime.__file__]))
"""


def seconds(tree: Path, checkpoint: tuple[Path, Path], shape: str, threads: int,
            scratch: Path) -> float:
    """Seconds of one forecast of ``shape`` by the runtime in ``tree`` (its own subprocess,
    which must import that tree's ``kronos_runtime``, not this one's)."""
    rows, horizon, paths = (int(part) for part in shape.split("x"))
    data = scratch / f"candles-{rows}.pkl"
    pd.to_pickle(candles(rows, seed=1), data)
    code = ONE_FORECAST.format(tree=str(tree), threads=threads, model=str(checkpoint[0]),
                               tokenizer=str(checkpoint[1]), data=str(data), horizon=horizon,
                               paths=paths)
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                          check=True)
    elapsed, runtime_file = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(runtime_file).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{tree}: the forecast ran {runtime_file}, not that tree's runtime")
    return float(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["400x120x1"], help="ROWSxHORIZONxPATHS")
    parser.add_argument("--dev-shape", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="build/before")
    args = parser.parse_args()
    from kronos_runtime.dev_checkpoint import write_pair

    out = Path(args.out)
    old_tree = source_before(out)
    scratch = Path(tempfile.mkdtemp(prefix="kronos-before-"))
    checkpoint = write_pair(scratch, args.dev_shape)
    for shape in args.shapes:
        engine = seconds(ROOT, checkpoint, shape, args.threads, scratch)
        before = seconds(old_tree, checkpoint, shape, args.threads, scratch)
        print(json.dumps({"shape": shape, "engine_s": round(engine, 2),
                          f"before_{BEFORE_COMMIT}_s": round(before, 2),
                          "engine_over_before": round(engine / before, 3)}), flush=True)


if __name__ == "__main__":
    main()
