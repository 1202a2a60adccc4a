#!/usr/bin/env python
"""Continuous (step-level) batching against request-level batching, in the same run.

Starts one server per batching mode (``make serve`` defaults: the small dev checkpoint, exact
sliding, 2 threads) on 127.0.0.1 and runs, each bounded in time. Modes: ``continuous`` (the
engine), ``request`` (the same engine admitting only when idle: request-level admission with
today's runtime) and ``before`` (the service as it was when issue #12 was filed, commit
``BEFORE_COMMIT``, extracted with ``git archive``: the request-level batcher the issue measured).
Scenarios:

- ``interference``: 3 clients keep 400-row, 120-step, 4-path requests in flight while one client
  sends 64-row 8-step greedy requests; the short request's p50/p95 against its idle p50;
- ``throughput``: 32 clients of 400x120 requests: forecasts per second;
- ``mixed``: 16 clients of mixed shapes (20-500 rows, horizons 1-120, 1-8 paths, some quantiles;
  ``--mix`` picks how they are drawn):
  p50/p95 of short (horizon <= 16) and long requests, throughput;
- ``open``: the same shapes arriving open-loop, a Poisson process of ``--rate`` requests per
  second whatever the server's answers (production traffic: a slow answer does not slow the
  next arrivals, as it does for the closed-loop clients of ``mixed``).

For each it reads the server's engine metrics: rows per step and the worst step time.
Writes JSON, a markdown table and a plot:
  python scripts/bench_engine.py --duration 60 --out build/engine
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from load_test import Shape  # noqa: E402
from local_server import import_dev_model, metric_values, running_server  # noqa: E402

SHORT = Shape(64, 8)
LONG = Shape(400, 120, 4)
THROUGHPUT = Shape(400, 120)
UNANSWERED = -1  # the status of a request still in flight when a scenario ends
BEFORE_COMMIT = "1bbed4c"  # the last commit before the engine: today's batcher in issue #12
LABELS = {"continuous": "continuous", "request": "request-level admission (same engine)",
          "before": f"before the engine ({BEFORE_COMMIT})"}


def mixed_shape(rng: random.Random, mix: str) -> Shape:
    """20-500 rows, horizon 1-120, 1-8 paths. ``uniform``: every value equally likely (issue
    #12's description read literally); ``skewed``: horizons 1, 4, 8, 16, 32, 64 or 120 and
    paths 1, 1, 2, 4 or 8 (mostly short work)."""
    if mix == "uniform":
        return Shape(rng.randint(20, 500), rng.randint(1, 120), rng.randint(1, 8))
    return Shape(rng.randint(20, 500), rng.choice([1, 4, 8, 16, 32, 64, 120]), rng.choice([1, 1, 2, 4, 8]))


def mixed_body(rng: random.Random, mix: str) -> dict:
    """A request of the mixed soak (``mixed_shape``), 30% of them with quantiles."""
    shape = mixed_shape(rng, mix)
    body = shape.body(rng.randint(0, 10 ** 6))
    if rng.random() < 0.3:
        body["quantiles"] = [0.1, 0.5, 0.9]
    return body


class Answers:
    """(body, latency, status) of every request sent with :meth:`send`; the requests still in
    flight when the scenario ends count as status ``UNANSWERED`` with their time so far (a
    lower bound)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answered: list[tuple[dict, float, int]] = []
        self.in_flight: dict[int, tuple[dict, float]] = {}

    async def send(self, key: int, body: dict, http: httpx.AsyncClient) -> None:
        begin = time.perf_counter()
        self.in_flight[key] = (body, begin)
        try:
            status = (await http.post(self.url + "/v1/predict/single", json=body)).status_code
        except httpx.HTTPError:
            status = 0
        del self.in_flight[key]
        self.answered.append((body, time.perf_counter() - begin, status))

    def all(self) -> list[tuple[dict, float, int]]:
        ended = time.perf_counter()
        return self.answered + [(body, ended - begin, UNANSWERED) for body, begin in self.in_flight.values()]


async def clients(url: str, bodies, count: int, duration: float, drain: float) -> list[tuple[dict, float, int]]:
    """``count`` closed-loop clients for ``duration`` s; (body, latency, status) per answer.

    A request still unanswered ``drain`` s after the end counts as one answer of status
    ``UNANSWERED``, with its time so far as latency (a lower bound)."""
    answers = Answers(url)
    stop_at = time.perf_counter() + duration

    async def client(index: int, http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            await answers.send(index, bodies(index), http)

    limits = httpx.Limits(max_connections=count + 4)
    async with httpx.AsyncClient(timeout=duration + drain, limits=limits) as http:
        tasks = [asyncio.create_task(client(i, http)) for i in range(count)]
        await asyncio.wait(tasks, timeout=duration + drain)
        for task in tasks:
            task.cancel()
    return answers.all()


async def open_loop(url: str, bodies, rate: float, duration: float, drain: float,
                    seed: int = 11) -> list[tuple[dict, float, int]]:
    """Requests arriving as a Poisson process of ``rate`` per second for ``duration`` s (at most
    ``1.5 * rate * duration`` of them), each sent at its arrival; (body, latency, status) per
    answer, unanswered ones as in :func:`clients`."""
    arrivals = random.Random(seed)
    answers = Answers(url)
    cap = int(1.5 * rate * duration) + 1
    limits = httpx.Limits(max_connections=cap + 4)
    async with httpx.AsyncClient(timeout=duration + drain, limits=limits) as http:
        tasks, started = [], time.perf_counter()
        next_at = arrivals.expovariate(rate)
        while next_at < duration and len(tasks) < cap:
            await asyncio.sleep(max(0.0, started + next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(answers.send(len(tasks), bodies(len(tasks)), http)))
            next_at += arrivals.expovariate(rate)
        await asyncio.wait(tasks, timeout=max(0.001, started + duration + drain - time.perf_counter()))
        for task in tasks:
            task.cancel()
    return answers.all()


def latencies(answers: list[tuple[dict, float, int]], keep=lambda body: True) -> list[float]:
    """Latencies of the answered requests whose body ``keep`` accepts, and of the unanswered
    ones (their time so far: a lower bound)."""
    return [t for body, t, status in answers if status in (200, UNANSWERED) and keep(body)]


def write_answers(answers: list[tuple[dict, float, int]], path: Path) -> None:
    """One line per request: its shape, latency and status (no candle values)."""
    with path.open("w") as out:
        for body, seconds, status in answers:
            out.write(json.dumps({"rows": len(body["data"]), "pred_len": body["pred_len"],
                                  "sample_count": body["sample_count"], "latency_s": round(seconds, 3),
                                  "status": status}) + "\n")


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    p50, p95 = np.percentile(latencies, [50, 95])
    return {"n": len(latencies), "p50_s": round(float(p50), 3), "p95_s": round(float(p95), 3),
            "mean_s": round(float(np.mean(latencies)), 3)}


def engine_metrics(url: str) -> dict:
    text = httpx.get(url + "/v1/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(metric_values(text, name))
    steps = total("kronos_engine_step_seconds_count")
    return {"steps": steps, "step_seconds": total("kronos_engine_step_seconds_sum"),
            "rows_sum": total("kronos_engine_live_rows_sum"),
            "urgent_steps": total("kronos_engine_urgent_steps_total"),
            "worst_step_s": max(metric_values(text, "kronos_engine_worst_step_seconds") or [0])}


def delta(before: dict, after: dict) -> dict:
    steps = after["steps"] - before["steps"]
    return {"steps": int(steps),
            "rows_per_step": round((after["rows_sum"] - before["rows_sum"]) / steps, 1) if steps else 0,
            "mean_step_ms": round(1000 * (after["step_seconds"] - before["step_seconds"]) / steps, 1)
            if steps else 0, "worst_step_s_so_far": round(after["worst_step_s"], 3),
            "urgent_steps": int(after["urgent_steps"] - before["urgent_steps"])}


def source_before(out: Path) -> Path:
    """The service's source tree as of ``BEFORE_COMMIT`` (needs the repository's history)."""
    tree = out / f"before-{BEFORE_COMMIT}"
    if not (tree / "service.py").is_file():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", BEFORE_COMMIT], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_mode(mode: str, home: Path, model: str, args: argparse.Namespace, out: Path) -> dict:
    engine = mode != "before"  # the old service has no engine (no batching setting, no metrics)
    env = {"KRONOS_MODEL": model, "KRONOS_THREADS": "2",
           "KRONOS_LOG_LEVEL": "WARNING", "KRONOS_RECORD_FORECASTS": "false",
           "KRONOS_CACHE_MAX_ENTRIES": "0", "KRONOS_JOBS_ENABLED": "false",
           **({"KRONOS_BATCHING": mode} if engine else {}),
           **dict(item.split("=", 1) for item in args.env)}
    report: dict = {"mode": mode}
    source = ROOT if engine else source_before(out)
    with running_server(home, env, out / f"server-{mode}.log", timeout=300, cwd=source) as server:
        url = server.url
        idle = asyncio.run(clients(url, lambda i: SHORT.body(i), 1, args.idle, 60))
        report["short_idle"] = percentiles([t for _, t, s in idle if s == 200])
        for scenario in args.scenarios:
            metrics_at_start = engine_metrics(url) if engine else None
            started = time.perf_counter()
            if scenario == "interference":
                answers = asyncio.run(clients(
                    url, lambda i: SHORT.body(random.randint(0, 99)) if i == 0 else LONG.body(i), 4,
                    args.duration, args.drain))
                short = latencies(answers, lambda b: b["pred_len"] == SHORT.horizon)
                result = {"short": percentiles(short),
                          "long": percentiles(latencies(answers, lambda b: b["pred_len"] == LONG.horizon))}
                if short and report["short_idle"]["n"]:
                    result["short_p95_over_idle_p50"] = round(
                        result["short"]["p95_s"] / report["short_idle"]["p50_s"], 1)
            elif scenario == "throughput":
                answers = asyncio.run(clients(url, lambda i: THROUGHPUT.body(random.randint(0, 99)),
                                              32, args.duration, args.drain))
                result = {"all": percentiles(latencies(answers))}
            else:
                rng = random.Random(7)
                if scenario == "open":
                    answers = asyncio.run(open_loop(url, lambda i: mixed_body(rng, args.mix), args.rate,
                                                    args.duration, args.drain))
                else:
                    answers = asyncio.run(clients(url, lambda i: mixed_body(rng, args.mix), 16,
                                                  args.duration, args.drain))
                result = {"all": percentiles(latencies(answers)),
                          "short": percentiles(latencies(answers, lambda b: b["pred_len"] <= 16)),
                          "long": percentiles(latencies(answers, lambda b: b["pred_len"] > 16))}
            seconds = time.perf_counter() - started
            write_answers(answers, out / f"answers-{mode}-{scenario}.jsonl")
            result["errors"] = sum(1 for *_, s in answers if s not in (200, UNANSWERED))
            result["timeouts"] = sum(1 for *_, s in answers if s == 504)  # past timeout_s (300 s)
            result["unfinished"] = sum(1 for *_, s in answers if s == UNANSWERED)
            result["throughput_per_s"] = round(sum(1 for *_, s in answers if s == 200) / seconds, 3)
            if scenario == "open":
                result["offered_per_s"] = round(len(answers) / args.duration, 3)
            if metrics_at_start is not None:
                result["engine"] = delta(metrics_at_start, engine_metrics(url))
            report[scenario] = result
            print(json.dumps({"mode": mode, "scenario": scenario, **result}), flush=True)
    return report


def plot(reports: list[dict], path: Path) -> None:
    """p95 latencies per scenario and mode (log scale), and closed-loop throughput beside them
    when a closed-loop scenario ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("interference", "short", "short 64x8 beside 400x120x4"),
            ("mixed", "short", "mixed soak: short"), ("mixed", "long", "mixed soak: long"),
            ("open", "short", "open-loop mix: short"), ("open", "long", "open-loop mix: long"),
            ("open", "all", "open-loop mix: all")]
    rows = [row for row in rows if all(row[0] in report for report in reports)]
    scenarios = [s for s in ("throughput", "mixed") if all(s in r for r in reports)]
    figure, axes = plt.subplots(1, 2 if scenarios else 1, figsize=(12 if scenarios else 7, 4.5))
    left = axes[0] if scenarios else axes
    width = 0.8 / len(reports)
    offsets = [width * (i - (len(reports) - 1) / 2) for i in range(len(reports))]
    for offset, report in zip(offsets, reports):
        p95 = [report[s][k].get("p95_s", 0) for s, k, _ in rows]
        left.bar(np.arange(len(rows)) + offset, p95, width, label=LABELS[report["mode"]])
    left.set_xticks(range(len(rows)), [label for *_, label in rows], fontsize=8)
    left.set_ylabel("p95 latency (s)")
    left.set_yscale("log")
    left.legend()
    if scenarios:
        right = axes[1]
        for offset, report in zip(offsets, reports):
            right.bar(np.arange(len(scenarios)) + offset,
                      [report[s]["throughput_per_s"] for s in scenarios], width, label=LABELS[report["mode"]])
        right.set_xticks(range(len(scenarios)), ["32 x 400x120" if s == "throughput" else "mixed soak"
                                                 for s in scenarios])
        right.set_ylabel("forecasts / s")
        right.legend()
    figure.suptitle("continuous vs request-level batching (small model, 2 CPU threads)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["interference", "throughput", "mixed"],
                        choices=["interference", "throughput", "mixed", "open"])
    parser.add_argument("--modes", nargs="+", default=["continuous", "request", "before"],
                        choices=["continuous", "request", "before"])
    parser.add_argument("--mix", default="skewed", choices=["skewed", "uniform"],
                        help="the mixed soak's shapes (see mixed_shape)")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="requests per second of the open scenario (Poisson arrivals)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--idle", type=float, default=8.0, help="seconds of the idle short baseline")
    parser.add_argument("--drain", type=float, default=180.0)
    parser.add_argument("--dev-shape", default="small")
    parser.add_argument("--env", nargs="*", default=[], help="extra KRONOS_*=value for the servers")
    parser.add_argument("--out", default="build/engine")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="kronos-engine-bench-"))
    model = import_dev_model(home, "kronos-bench", shape=args.dev_shape)
    reports = [run_mode(mode, home, model, args, out) for mode in args.modes]
    (out / "bench_engine.json").write_text(json.dumps(reports, indent=1))
    if len(reports) >= 2:
        plot(reports, out / "bench_engine.png")
    print(f"wrote {out / 'bench_engine.json'}")


if __name__ == "__main__":
    main()
