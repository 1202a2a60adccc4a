"""scripts/load_test.py: a short real sweep (servers it starts itself) and its safety rails."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from local_server import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from load_test import Shape, require_local  # noqa: E402


def test_only_local_targets_are_accepted():
    assert require_local("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert require_local("http://localhost:8080") == "http://localhost:8080"
    for url in ("http://10.0.0.5:3000", "https://example.com", "http://0.0.0.0:3000"):
        with pytest.raises(SystemExit):
            require_local(url)


def test_shapes_parse_and_make_valid_candles():
    shape = Shape.parse("40x6x3")
    assert (shape.lookback, shape.horizon, shape.paths, str(shape)) == (40, 6, 3, "40x6x3")
    body = shape.body(seed=1)
    assert len(body["data"]) == 40 and body["sample_count"] == 3 and body["pred_len"] == 6
    assert all(row[1] >= max(row[0], row[3]) and row[2] <= min(row[0], row[3]) for row in body["data"])
    with pytest.raises(Exception):
        Shape.parse("40")


def test_a_short_sweep_reports_batching_on_and_off(tmp_path):
    out = tmp_path / "load"
    done = subprocess.run(
        [sys.executable, "scripts/load_test.py", "--sweep", "--dev-shape", "tiny", "--concurrency",
         "1", "4", "--shapes", "24x4", "--duration", "2", "--direct", "2", "--threads", "1",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "BENTOML_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "load_test.json").read_text())
    rows = {(r["batching"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("on", 1), ("on", 4), ("off", 1), ("off", 4)}
    for row in rows.values():
        assert row["ok"] > 0 and row["errors"] == {} and row["unfinished"] == 0
        assert row["throughput"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert report["direct"]["24x4"]["p50_ms"] > 0
    assert "service_overhead_p50_ms" in report["direct"]["24x4"]
    assert all(v > 0 for v in report["worker_rss_mb"].values())
    assert (out / "load_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 24x4 | off | 4 |" in (out / "load_test.md").read_text()
