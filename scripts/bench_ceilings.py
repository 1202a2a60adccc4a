#!/usr/bin/env python
"""This machine's ceilings for the runtime: matmul rate, memory bandwidth, weight streaming.

Prints the numbers the README's CPU performance analysis uses: fp32/bf16 matrix-product rates,
the read bandwidth of a large reduction, and how fast a decode step's matrix-vector products
(one row against every weight of Kronos-small's linear layers) stream the weights through
MKL (F.linear), oneDNN (pre-packed, as the runtime does) and numpy's BLAS.

Example (numpy's BLAS reads its thread count from the environment):
    OPENBLAS_NUM_THREADS=2 python scripts/bench_ceilings.py --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# Kronos-small's per-layer linear shapes (qkv, out, w1+w3, w2) x 8 layers, plus the two heads.
SMALL_LINEARS = [(1536, 512), (512, 512), (2048, 512), (512, 1024)] * 8 + [(1024, 512)] * 2


def median_seconds(work: Callable[[], object], repeats: int = 7) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} torch={torch.__version__}")

    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        seconds = median_seconds(lambda: x @ y, repeats=3)
        print(f"matmul {n}^3 {str(dtype).split('.')[-1]}: {2 * n ** 3 / seconds / 1e9:.0f} GFLOP/s")

    big = torch.randn(100_000_000)
    seconds = median_seconds(big.sum)
    print(f"read bandwidth (sum of 400 MB): {big.numel() * 4 / seconds / 1e9:.1f} GB/s")

    weights = [torch.randn(out, inp) for out, inp in SMALL_LINEARS]
    megabytes = sum(w.numel() for w in weights) * 4 / 1e6
    rows = [torch.randn(1, w.shape[1]) for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
    as_numpy = [(w.numpy(), r.numpy()[0]) for w, r in zip(weights, rows)]
    streams = {
        "F.linear (MKL)": lambda: [F.linear(r, w) for r, w in zip(rows, weights)],
        "oneDNN packed (runtime)": lambda: [torch.ops.mkldnn._linear_pointwise(r, p, None, "none", [], "")
                                            for r, p in zip(rows, packed)],
        "numpy W @ x (its BLAS)": lambda: [w @ r for w, r in as_numpy],
    }
    print(f"one decode step's matrix-vector products over {megabytes:.0f} MB of fp32 weights:")
    for name, work in streams.items():
        seconds = median_seconds(work)
        print(f"  {name}: {seconds * 1e3:.2f} ms = {megabytes / 1e3 / seconds:.1f} GB/s")


if __name__ == "__main__":
    main()
