#!/usr/bin/env python
"""What an exact-mode window recomputation costs per position, by chunk size and by how many
series share one call.

Feeds a ``--window``-position window from an empty cache in chunks (``model.extend``, as the
executor's recomputation does) and prints milliseconds per position (median of ``--repeats``),
every chunk size / series count in the same run.

Example (the experiments.md numbers): python scripts/bench_recompute_chunks.py \
    --chunks 64 128 256 512 --series 1 2 4
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronos_runtime.dev_checkpoint import write_model  # noqa: E402
from kronos_runtime.layers import RowGroups  # noqa: E402
from kronos_runtime.loading import load_model  # noqa: E402
from kronos_runtime.model import KVBuffers, causal_chunk_mask  # noqa: E402


@torch.inference_mode()
def window_seconds(model, window: int, chunk: int, series: int) -> float:
    """Seconds to feed a ``window``-position window of ``series`` series in ``chunk``-position
    chunks (one call per chunk for all series)."""
    device = model.device
    s1, s2 = torch.randint(0, 1024, (2, series, window))
    stamps = torch.randint(0, 5, (series, window, 5))
    buffers = KVBuffers(model, series, window)
    started = time.perf_counter()
    for start in range(0, window, chunk):
        end = min(window, start + chunk)
        model.extend(s1[:, start:end], s2[:, start:end], stamps[:, start:end],
                     torch.arange(start, end)[None].expand(series, -1), None, None,
                     buffers.cache(slice(None), length=start), causal_chunk_mask(start, end - start, device),
                     RowGroups(list(range(series)), device))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--series", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(write_model(Path(tempfile.mkdtemp()) / "model", args.shape))
    model.rope.reserve(2 * args.window, model.device, model.dtype)
    for chunk, series in itertools.product(args.chunks, args.series):
        window_seconds(model, args.window, chunk, series)  # warm-up
        seconds = statistics.median(window_seconds(model, args.window, chunk, series)
                                    for _ in range(args.repeats))
        print(f"chunk {chunk:4d}  series {series:2d}  {1000 * seconds / (args.window * series):6.3f} ms"
              f" per position  window {1000 * seconds:7.1f} ms", flush=True)


if __name__ == "__main__":
    main()
