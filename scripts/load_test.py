#!/usr/bin/env python
"""Load test a Kronos service on 127.0.0.1: N concurrent clients for a bounded time.

One run against a service you started (``make serve``):
  python scripts/load_test.py --url http://127.0.0.1:3000 --concurrency 32 --shape 400x120 \
      --duration 30
A sweep that starts its own servers (adaptive batching on, then off), runs every shape at every
concurrency, measures the runtime called directly for the overhead, and writes JSON + a PNG plot:
  python scripts/load_test.py --sweep --dev-shape small --concurrency 1 4 16 64 \
      --shapes 64x16 400x120 400x120x8 --duration 20 --out build/load

Shapes are LOOKBACKxHORIZON[xPATHS]. Throughput counts successful forecasts per second over the
whole run, in-flight requests drained at the end (bounded by ``--drain``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Shape:
    lookback: int
    horizon: int
    paths: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shape":
        parts = [int(p) for p in text.lower().split("x")]
        if len(parts) not in (2, 3) or min(parts) < 1:
            raise argparse.ArgumentTypeError(f"shape {text!r}: expected LOOKBACKxHORIZON[xPATHS]")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.lookback}x{self.horizon}" + (f"x{self.paths}" if self.paths > 1 else "")

    def body(self, seed: int) -> dict:
        """A random-walk series of ``lookback`` candles; greedy for one path, seeded otherwise."""
        rng = np.random.default_rng(seed)
        close = 100 + np.cumsum(rng.normal(scale=0.5, size=self.lookback))
        opening = close + rng.normal(scale=0.2, size=self.lookback)
        high = np.maximum(opening, close) + rng.uniform(0, 1, self.lookback)
        low = np.minimum(opening, close) - rng.uniform(0, 1, self.lookback)
        volume = rng.uniform(1e3, 5e3, self.lookback)
        rows = np.stack([opening, high, low, close, volume], axis=1).round(4).tolist()
        body = {"data": rows, "pred_len": self.horizon, "sample_count": self.paths, "seed": seed}
        if self.paths == 1:
            body["top_k"] = 1
        return body


@dataclass
class RunResult:
    concurrency: int
    shape: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0

    def summary(self) -> dict:
        ok = len(self.latencies)
        quantiles = np.percentile(self.latencies, [50, 95, 99]) if ok else [float("nan")] * 3
        return {"concurrency": self.concurrency, "shape": self.shape, "ok": ok,
                "errors": {k: v for k, v in self.statuses.items() if k != "200"},
                "unfinished": self.unfinished, "seconds": round(self.seconds, 2),
                "throughput": round(ok / self.seconds, 3) if self.seconds else 0.0,
                "p50_ms": round(quantiles[0] * 1000, 1), "p95_ms": round(quantiles[1] * 1000, 1),
                "p99_ms": round(quantiles[2] * 1000, 1)}


def require_local(url: str) -> str:
    """Load tests only ever target this machine."""
    host = urlparse(url).hostname
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"refusing to load test {url!r}: only 127.0.0.1/localhost targets")
    return url.rstrip("/")


async def run_load(url: str, shape: Shape, concurrency: int, duration: float,
                   max_requests: int = 0, drain: float = 300.0, api_key: str = "") -> RunResult:
    """``concurrency`` closed-loop clients for ``duration`` s (or ``max_requests`` in all)."""
    result = RunResult(concurrency, str(shape))
    bodies = [json.dumps(shape.body(seed)).encode() for seed in range(8)]
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    sent = 0
    started = time.perf_counter()
    stop_at = started + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and (not max_requests or sent < max_requests):
            sent += 1
            begin = time.perf_counter()
            try:
                response = await http.post(url + "/v1/predict/single", headers=headers,
                                           content=bodies[(index + sent) % len(bodies)])
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == "200":
                result.latencies.append(time.perf_counter() - begin)

    async with httpx.AsyncClient(timeout=httpx.Timeout(duration + drain), limits=limits) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=duration + drain)
        for task in pending:
            task.cancel()
        result.unfinished = len(pending)
    result.seconds = time.perf_counter() - started
    return result


def direct_latencies(source, shape: Shape, settings, repeats: int) -> list[float]:
    """The same requests through the runtime in this process, no HTTP and no batcher."""
    from kronos_runtime import KronosForecaster
    from kronos_serving.requests import to_forecast_request
    from kronos_serving.schemas import SingleRequest

    forecaster = KronosForecaster.from_pretrained(
        source.model_dir, source.tokenizer_dir, max_context=source.max_context or 512,
        sliding=settings.sliding, dtype=settings.dtype, device=settings.device)
    times = []
    for seed in range(repeats + 1):
        request = to_forecast_request(SingleRequest(**shape.body(seed % 8)), settings)
        begin = time.perf_counter()
        forecaster.forecast([request])
        times.append(time.perf_counter() - begin)
    return times[1:]  # the first one warms up


def worker_rss_mb(pid: int) -> float:
    """Resident memory of a server process tree (arbiter + workers), in MB."""
    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2 ** 20


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and p95 latency against concurrency, one line per shape and batching mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (shape, batching) in sorted({(r["shape"], r["batching"]) for r in rows}):
        line = sorted((r for r in rows if r["shape"] == shape and r["batching"] == batching),
                      key=lambda r: r["concurrency"])
        style = "-o" if batching == "on" else "--x"
        label = f"{shape}, batching {batching}"
        left.plot([r["concurrency"] for r in line], [r["throughput"] for r in line], style, label=label)
        right.plot([r["concurrency"] for r in line], [r["p95_ms"] / 1000 for r in line], style,
                   label=label)
    clients = sorted({r["concurrency"] for r in rows})
    for axis, title in ((left, "throughput (forecasts/s)"), (right, "p95 latency (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | batching | clients | forecasts/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        if r["unfinished"]:
            errors += f", unfinished: {r['unfinished']}"
        lines.append(f"| {r['shape']} | {r['batching']} | {r['concurrency']} | {r['throughput']} | "
                     f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {errors} |")
    return "\n".join(lines)


def sweep(args: argparse.Namespace) -> dict:
    from local_server import import_dev_model, running_server
    from kronos_serving.model_store import store_source
    from kronos_serving.settings import load_settings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("BENTOML_HOME") or tempfile.mkdtemp(prefix="kronos-load-"))
    model = import_dev_model(home, "kronos-load", shape=args.dev_shape) if args.dev_shape else args.model
    if not model:
        raise SystemExit("--sweep needs --model (a store tag in BENTOML_HOME) or --dev-shape")
    env = {"KRONOS_MODEL": model, "KRONOS_THREADS": str(args.threads), "KRONOS_SLIDING": args.sliding,
           "KRONOS_DEVICE": args.device,
           "KRONOS_DTYPE": args.dtype, "KRONOS_TIMEOUT_S": "900", "KRONOS_MAX_QUEUE": "4096",
           "KRONOS_MAX_PRED_LEN": "4096", "KRONOS_MAX_LOOKBACK": "8192", "KRONOS_LOG_LEVEL": "WARNING"}
    report: dict = {"model": model, "device": args.device, "threads": args.threads,
                    "sliding": args.sliding,
                    "dtype": args.dtype, "duration_s": args.duration, "rows": [], "direct": {},
                    "worker_rss_mb": {}}
    for batching in args.batching:
        extra = {} if batching == "on" else {"KRONOS_MAX_BATCH_SERIES": "1"}
        with running_server(home, {**env, **extra}, out / f"server-batching-{batching}.log",
                            timeout=300) as server:
            report["worker_rss_mb"][f"idle, batching {batching}"] = round(
                worker_rss_mb(server.process.pid), 1)
            for shape in args.shapes:
                for concurrency in args.concurrency:
                    result = asyncio.run(run_load(server.url, shape, concurrency, args.duration,
                                                  drain=args.drain))
                    row = {**result.summary(), "batching": batching}
                    report["rows"].append(row)
                    print(json.dumps(row), flush=True)
            report["worker_rss_mb"][f"after load, batching {batching}"] = round(
                worker_rss_mb(server.process.pid), 1)
    if args.direct:
        os.environ["BENTOML_HOME"] = str(home)
        source = store_source(model)
        settings = load_settings({**os.environ, **env})
        import torch

        torch.set_num_threads(args.threads)
        for shape in args.shapes:
            times = direct_latencies(source, shape, settings, args.direct)
            service = next((r for r in report["rows"] if r["shape"] == str(shape)
                            and r["concurrency"] == 1 and r["batching"] == "on"), None)
            entry = {"p50_ms": round(statistics.median(times) * 1000, 1), "runs": len(times)}
            if service:
                entry["service_overhead_p50_ms"] = round(service["p50_ms"] - entry["p50_ms"], 1)
            report["direct"][str(shape)] = entry
            print(json.dumps({"direct": str(shape), **entry}), flush=True)
    (out / "load_test.json").write_text(json.dumps(report, indent=1))
    (out / "load_test.md").write_text(markdown(report["rows"]) + "\n")
    try:
        plot(report["rows"], out / "load_test.png")
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    print(markdown(report["rows"]))
    print(f"wrote {out / 'load_test.json'}, {out / 'load_test.md'}, {out / 'load_test.png'}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="a running service (not --sweep)")
    parser.add_argument("--api-key", default=os.environ.get("KRONOS_API_KEY", ""))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--shape", "--shapes", dest="shapes", type=Shape.parse, nargs="+",
                        default=[Shape(64, 16), Shape(400, 120), Shape(400, 120, 8)])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending per run")
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many (0: no cap)")
    parser.add_argument("--drain", type=float, default=300.0,
                        help="seconds to wait for in-flight requests after --duration")
    parser.add_argument("--sweep", action="store_true", help="start servers, batching on and off")
    parser.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--model", help="--sweep: model-store tag (BENTOML_HOME) to serve")
    parser.add_argument("--dev-shape", help="--sweep: import a generated checkpoint of this shape")
    parser.add_argument("--sliding", default="exact", choices=["exact", "approximate"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=os.environ.get("KRONOS_DEVICE", "cpu"),
                        help="--sweep: the server's device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=2, help="--sweep: torch threads of the server")
    parser.add_argument("--direct", type=int, default=5,
                        help="--sweep: runtime calls per shape without the service (0: skip)")
    parser.add_argument("--out", default="build/load")
    args = parser.parse_args()
    if args.sweep:
        sweep(args)
        return
    url = require_local(args.url)
    for shape in args.shapes:
        for concurrency in args.concurrency:
            result = asyncio.run(run_load(url, shape, concurrency, args.duration, args.max_requests,
                                          args.drain, args.api_key))
            print(json.dumps(result.summary()), flush=True)


if __name__ == "__main__":
    main()
