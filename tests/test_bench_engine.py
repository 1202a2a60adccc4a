"""scripts/bench_engine.py: its mixes and a short real run against the engine and the batcher
it replaced (the service as of ``BEFORE_COMMIT``, served from its own source tree)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from local_server import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from bench_engine import BEFORE_COMMIT, mixed_shape  # noqa: E402

SKEWED_HORIZONS = {1, 4, 8, 16, 32, 64, 120}


def test_the_mixes_draw_the_issue_ranges():
    rng = random.Random(0)
    for mix in ("skewed", "uniform"):
        shapes = [mixed_shape(rng, mix) for _ in range(3000)]
        assert all(20 <= s.lookback <= 500 and 1 <= s.horizon <= 120 and 1 <= s.paths <= 8
                   for s in shapes)
        horizons = {s.horizon for s in shapes}
        if mix == "skewed":
            assert horizons == SKEWED_HORIZONS
        else:  # every horizon equally likely: nearly all of 1..120 appear in 3000 draws
            assert len(horizons - SKEWED_HORIZONS) > 100


def test_a_short_run_compares_the_engine_with_the_batcher_before_it(tmp_path):
    out = tmp_path / "engine"
    done = subprocess.run(
        [sys.executable, "scripts/bench_engine.py", "--scenarios", "mixed", "open", "--modes",
         "continuous", "before", "--mix", "uniform", "--rate", "2", "--duration", "3", "--idle", "1", "--drain", "60",
         "--dev-shape", "tiny", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    continuous, before = json.loads((out / "bench_engine.json").read_text())
    assert (continuous["mode"], before["mode"]) == ("continuous", "before")
    for report in (continuous, before):
        mixed = report["mixed"]
        assert mixed["all"]["n"] > 0 and mixed["errors"] == 0
        assert mixed["all"]["p50_s"] <= mixed["all"]["p95_s"] and mixed["timeouts"] == 0
        # every request's shape, latency and status, for the analysis of the tail
        lines = (out / f"answers-{report['mode']}-mixed.jsonl").read_text().splitlines()
        answers = [json.loads(line) for line in lines]
        assert len(answers) == mixed["all"]["n"] and {a["status"] for a in answers} == {200}
        assert all(20 <= a["rows"] <= 500 and 1 <= a["pred_len"] <= 120 for a in answers)
        # open loop: Poisson arrivals at --rate whatever the answers (3 s at 2/s: a few requests)
        arrived = report["open"]
        assert arrived["all"]["n"] >= 1 and arrived["errors"] == 0 and arrived["unfinished"] == 0
        assert arrived["offered_per_s"] == round(arrived["all"]["n"] / 3, 3)
        assert len((out / f"answers-{report['mode']}-open.jsonl").read_text().splitlines()) == arrived["all"]["n"]
    # the engine reports its steps; the old batcher has no engine, and ran from its own tree
    assert continuous["mixed"]["engine"]["steps"] > 0 and "engine" not in before["mixed"]
    assert continuous["mixed"]["engine"]["urgent_steps"] >= 0  # read from the server's metrics
    old_tree = out / f"before-{BEFORE_COMMIT}"
    assert not (old_tree / "kronos_runtime" / "engine" / "engine.py").exists()
    assert (old_tree / "kronos_runtime" / "generation.py").is_file()
    assert "Starting production HTTP BentoServer" in (out / "server-before.log").read_text()
    assert (out / "bench_engine.png").stat().st_size > 10_000


def test_the_recompute_chunk_benchmark_times_every_chunk_and_series_count():
    done = subprocess.run(
        [sys.executable, "scripts/bench_recompute_chunks.py", "--shape", "tiny", "--window", "32",
         "--chunks", "8", "32", "--series", "1", "2", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [(row[1], row[3]) for row in rows] == [("8", "1"), ("8", "2"), ("32", "1"), ("32", "2")]
    assert all(float(row[4]) > 0 for row in rows)
