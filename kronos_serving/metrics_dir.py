"""A Prometheus multiprocess directory per server, so servers sharing a BENTOML_HOME keep their metrics.

Every ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` at start, so a second
server on the same home wiped the first one's metric files (its counters restarted from zero).
Each worker moves to ``<that dir>.servers/<arbiter pid>-<arbiter start time>/`` before any metric
is created; the workers of one server share it, other servers never touch it, and directories
of servers that are gone are removed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import MutableMapping

from .worker_readiness import process_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def server_key(pid: int) -> str:
    return f"{pid}-{process_start(pid)}"


def remove_gone_servers(servers: Path, keep: Path) -> None:
    """Delete the directories of servers whose arbiter no longer runs."""
    for directory in servers.iterdir():
        pid, _, _ = directory.name.partition("-")
        if directory == keep or not pid.isdigit():
            continue
        if not process_alive(int(pid)) or server_key(int(pid)) != directory.name:
            shutil.rmtree(directory, ignore_errors=True)


def isolate_metrics_dir(worker_index: int | None, environ: MutableMapping[str, str] = os.environ,
                        arbiter: int | None = None) -> Path | None:
    """In a BentoML worker, point ``PROMETHEUS_MULTIPROC_DIR`` at this server's own directory."""
    shared = environ.get(ENV)
    if worker_index is None or not shared:
        return None
    servers = Path(shared).with_name(Path(shared).name + ".servers")
    own = servers / server_key(arbiter or os.getppid())
    try:
        own.mkdir(parents=True, exist_ok=True)
        remove_gone_servers(servers, keep=own)
    except OSError:
        return None  # read-only home: keep BentoML's directory
    environ[ENV] = str(own)
    return own
