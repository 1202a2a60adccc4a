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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_engine import BEFORE_COMMIT, source_before  # noqa: E402

ONE_FORECAST = """
import json, sys, time
import torch
sys.path.insert(0, {tree!r}); sys.path.insert(0, {scripts!r})
from bench_runtime import candles
from kronos_runtime import ForecastRequest, KronosForecaster, SamplingParams
torch.set_num_threads({threads})
forecaster = KronosForecaster.from_pretrained({model!r}, {tokenizer!r}, max_context=512)
frame, stamps = candles({rows}, seed=1)
sampling = SamplingParams(top_k=1) if {paths} == 1 else SamplingParams(sample_count={paths}, seed=1)
forecaster.forecast([ForecastRequest(frame.tail(64), 4, timestamps=stamps.tail(64))])  # warm-up
started = time.perf_counter()
forecaster.forecast([ForecastRequest(frame, {horizon}, timestamps=stamps, sampling=sampling)])
print(json.dumps(time.perf_counter() - started))
"""


def seconds(tree: Path, checkpoint: tuple[Path, Path], shape: str, threads: int) -> float:
    rows, horizon, paths = (int(part) for part in shape.split("x"))
    code = ONE_FORECAST.format(tree=str(tree), scripts=str(ROOT / "scripts"), threads=threads,
                               model=str(checkpoint[0]), tokenizer=str(checkpoint[1]), rows=rows,
                               horizon=horizon, paths=paths)
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


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
    checkpoint = write_pair(Path(tempfile.mkdtemp(prefix="kronos-before-")), args.dev_shape)
    for shape in args.shapes:
        engine = seconds(ROOT, checkpoint, shape, args.threads)
        before = seconds(old_tree, checkpoint, shape, args.threads)
        print(json.dumps({"shape": shape, "engine_s": round(engine, 2),
                          f"before_{BEFORE_COMMIT}_s": round(before, 2),
                          "engine_over_before": round(engine / before, 3)}), flush=True)


if __name__ == "__main__":
    main()
