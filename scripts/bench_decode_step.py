#!/usr/bin/env python
"""What one engine decode step costs: attention over the buffers' whole capacity (the step
before it read only written keys) against attention over what live rows have written.

Builds a decode batch's buffers directly (``--prefix``/``--own`` capacity, random keys/values,
series windows drawn up to ``--window``, rows' own lengths up to ``--written``) and times one
decode position for every row: s1 logits, then s2 logits. Prints milliseconds per step both
ways and their ratio, measured in the same run; ``--profile`` adds the operator breakdown.

Example (the README numbers): python scripts/bench_decode_step.py --rows 13 47 --series 20 \
    --window 512 --written 64 128
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronos_runtime.dev_checkpoint import write_model  # noqa: E402
from kronos_runtime.engine.decode_pass import aligned_keys, decode_pass  # noqa: E402
from kronos_runtime.layers import RowGroups  # noqa: E402
from kronos_runtime.loading import load_model  # noqa: E402
from kronos_runtime.model import KVBuffers  # noqa: E402


def step_ms(model, series: int, rows: int, window: int, written: int, capacity: tuple[int, int],
            repeats: int, trimmed: bool, profile: bool = False) -> float:
    """Milliseconds of one decode step: ``rows`` rows of ``series`` series, windows drawn in
    20..``window``, rows at steps drawn in 0..``written``-1 (``trimmed``: attention over the
    written keys only, as the engine does; else over the whole capacity)."""
    rng = random.Random(0)
    prefixes, owns = KVBuffers(model, series, capacity[0]), KVBuffers(model, rows, capacity[1])
    for keys, values in prefixes.all() + owns.all():
        keys.normal_(), values.normal_()
    row_series = sorted(i % series for i in range(rows))
    windows = [rng.randint(20, window) for _ in range(series)]
    lengths = torch.tensor([windows[s] for s in row_series])
    steps = torch.tensor([rng.randint(0, written - 1) for _ in range(rows)])
    keys = ((aligned_keys(int(lengths.max()), capacity[0]), aligned_keys(int(steps.max()) + 1, capacity[1]))
            if trimmed else (None, None))
    tokens = torch.randint(0, 1024, (2, rows))
    stamps = torch.randint(0, 5, (rows, 1, 5)).float()
    groups = RowGroups(row_series, model.device)

    @torch.inference_mode()
    def one_step() -> None:
        step = decode_pass(model, prefixes, owns, series, tokens[0], tokens[1], stamps, lengths,
                           steps, None, groups, *keys)
        step.s2_logits(step.s1_logits().argmax(-1))

    for _ in range(3):
        one_step()
    started = time.perf_counter()
    for _ in range(repeats):
        one_step()
    elapsed = 1000 * (time.perf_counter() - started) / repeats
    if profile:
        with torch.profiler.profile() as prof:
            for _ in range(5):
                one_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--rows", type=int, nargs="+", default=[47])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--window", type=int, nargs="+", default=[512])
    parser.add_argument("--written", type=int, nargs="+", default=[128])
    parser.add_argument("--prefix", type=int, default=512, help="prefix capacity")
    parser.add_argument("--own", type=int, default=128, help="own-cache capacity")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(write_model(Path(tempfile.mkdtemp()) / "model", args.shape))
    model.rope.reserve(4 * (args.prefix + args.own), model.device, model.dtype)
    for rows, window, written in itertools.product(args.rows, args.window, args.written):
        series = min(args.series, rows)
        full, trimmed = (step_ms(model, series, rows, window, written, (args.prefix, args.own),
                                 args.repeats, trim, profile=args.profile and trim)
                         for trim in (False, True))
        print(f"rows {rows:4d}  series {series:3d}  windows <= {window:4d}  written < {written:4d}"
              f"  capacity {full:7.1f} ms  written keys {trimmed:7.1f} ms  ratio {full / trimmed:5.2f}",
              flush=True)


if __name__ == "__main__":
    main()
