"""`pip install .` gives the runtime and its `kronos` CLI outside the repository; `make serve`
installs the runtime dependencies only, with no root or apt."""
from __future__ import annotations

import os
import subprocess
import sys

from local_server import ROOT


def test_pip_install_gives_the_runtime_and_the_cli_outside_the_repo(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--no-build-isolation", "--target", str(site), str(ROOT)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import kronos_runtime, kronos_serving; "
                            "print(kronos_runtime.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
    checkpoint = tmp_path / "ckpt"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_dev_checkpoint.py"), "--shape", "tiny",
                    "--out", str(checkpoint)], check=True, capture_output=True, timeout=120)
    forecast = subprocess.run([str(site / "bin" / "kronos"), "forecast", "--model",
                               str(checkpoint / "model"), "--tokenizer", str(checkpoint / "tokenizer"),
                               "--input", str(ROOT / "examples" / "prices.csv"), "--pred-len", "3",
                               "--seed", "1", "--output", str(tmp_path / "out.csv")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert forecast.returncode == 0, forecast.stderr
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 4  # header + 3 steps


def test_make_serve_installs_runtime_dependencies_only_without_root():
    plan = subprocess.run(["make", "-n", "-B", "serve"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert "requirements.txt" in plan and "scripts/torch_index.py" in plan
    assert "download.pytorch.org/whl/cpu" in (ROOT / "scripts" / "torch_index.py").read_text()
    assert "requirements-dev.txt" not in plan and "apt-get" not in plan and "kronos-model-arch" not in plan
    test_plan = subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "requirements-dev.txt" in test_plan and "apt-get" in test_plan
    runtime = (ROOT / "requirements.txt").read_text()
    for test_only in ("pytest", "schemathesis", "kubernetes-validate", "selenium", "einops"):
        assert test_only not in runtime
