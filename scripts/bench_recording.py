#!/usr/bin/env python
"""Overhead of forecast records at one client: p50 with recording on vs off (127.0.0.1 only).

Starts two servers on the same generated model (``record_forecasts`` true and false, SQLite
store), then sends the same sequential requests to them alternately (so load on the machine hits
both alike; each goes first in half the rounds) and prints p50/p95 per server and the p50 difference:
  python scripts/bench_recording.py --requests 200 --shape 32x4
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from load_test import Shape  # noqa: E402
from local_server import import_dev_model, running_server  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per server")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--shape", type=Shape.parse, default=Shape(32, 4))
    parser.add_argument("--dev-shape", default="tiny")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kronos-bench-recording-") as tmp, ExitStack() as stack:
        home = Path(tmp)
        tag = import_dev_model(home, "kronos-bench", shape=args.dev_shape)
        servers = {}
        for recording in ("on", "off"):
            env = {"KRONOS_MODEL": tag, "KRONOS_RECORD_FORECASTS": "true" if recording == "on" else "false",
                   "KRONOS_DATA_DIR": str(home / f"data-{recording}")}
            servers[recording] = stack.enter_context(
                running_server(home, env, home / f"server-{recording}.log"))
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        with httpx.Client(timeout=60) as client:
            for i in range(args.warmup + args.requests):
                order = list(servers.items())
                for recording, server in order if i % 2 else order[::-1]:  # each goes first half the time
                    body = args.shape.body(seed=i)
                    started = time.perf_counter()
                    response = client.post(server.url + "/v1/predict/single", json=body,
                                           headers={"X-Request-ID": f"bench-{i}"})
                    elapsed = (time.perf_counter() - started) * 1000
                    response.raise_for_status()
                    if i >= args.warmup:
                        latencies[recording].append(elapsed)
            time.sleep(0.5)  # the writer flushes every 100 ms
            last = f"/v1/forecasts/bench-{args.warmup + args.requests - 1}"
            recorded = {k: client.get(s.url + last).status_code == 200 for k, s in servers.items()}
        if recorded != {"on": True, "off": False}:
            raise SystemExit(f"records not as configured: {recorded}")
    result = {"shape": str(args.shape), "requests": args.requests,
              **{f"p50_{k}_ms": round(statistics.median(v), 2) for k, v in latencies.items()},
              **{f"p95_{k}_ms": round(percentile(v, 0.95), 2) for k, v in latencies.items()}}
    result["p50_overhead_ms"] = round(result["p50_on_ms"] - result["p50_off_ms"], 2)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
