"""Start real ``bentoml serve`` processes on 127.0.0.1 (isolated BENTOML_HOME) for tests and load tests."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
# Where bentoml is installed without its console script (e.g. pip --target), run the module.
BENTOML_COMMAND = [BENTOML] if Path(BENTOML).exists() else [sys.executable, "-m", "bentoml"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def import_dev_model(bentoml_home: Path, name: str, shape: str = "tiny", seed: int = 0) -> str:
    """Import a generated checkpoint into the store at ``bentoml_home``; returns its tag."""
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    done = subprocess.run([sys.executable, "scripts/import_model.py", "--name", name,
                           "--dev-shape", shape, "--seed", str(seed)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process, self.url, self.log_path = process, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The server's worker processes (children of the arbiter, each in its own session)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def kill(self) -> None:
        """SIGKILL the workers, then the arbiter: a crash, nothing cleaned up."""
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGKILL)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def running_server(bentoml_home: Path, env: dict[str, str], log_path: Path,
                   wait_ready: bool = True, timeout: float = 120,
                   target: str = "service:KronosService", cwd: Path = ROOT) -> Iterator[Server]:
    """A ``bentoml serve`` subprocess on a free 127.0.0.1 port, stopped (SIGTERM) afterwards."""
    port = free_port()
    full_env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "KRONOS_THREADS": "1",
                "KRONOS_DRAIN_DELAY_S": "0",  # tests stop servers at once (the default drains 5 s)
                "HF_HUB_OFFLINE": "1", **env}
    with log_path.open("w") as log:
        process = subprocess.Popen([*BENTOML_COMMAND, "serve", target, "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=cwd, env=full_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.time() + timeout
        path = "/v1/readyz" if wait_ready else "/v1/healthz"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited:\n{server.log()[-3000:]}")
            try:
                if httpx.get(server.url + path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"server not up after {timeout}s:\n{server.log()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def readiness_after_loading(server: Server, tries: int = 100) -> httpx.Response:
    """``/v1/readyz`` once the model load has ended (succeeded or failed)."""
    for _ in range(tries):
        ready = httpx.get(server.url + "/v1/readyz")
        if ready.json()["status"] != "loading":
            break
        time.sleep(0.2)
    return ready


def metric_values(text: str, name: str) -> list[float]:
    """The ``name`` samples (every label set) of a Prometheus text exposition."""
    return [float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)]


def metric_total(server: Server, name: str) -> float:
    """Sum of the ``name`` samples (every label set) on the server's ``/v1/metrics``."""
    return sum(metric_values(httpx.get(server.url + "/v1/metrics", timeout=10).text, name))
