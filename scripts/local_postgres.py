"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests (Debian's ``postgresql`` package).

``running_postgres()`` runs initdb and ``pg_ctl start`` as an unprivileged user (``nobody`` when
we are root: PostgreSQL refuses to run as root) in a fresh temp dir on a free port, creates a
database, yields its ``postgresql+psycopg://`` URL and stops the server by its PID.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from local_server import free_port

RUN_AS = "nobody"


def postgres_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<version>/bin``, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _as_user(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        command = ["runuser", "-u", RUN_AS, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)


class Postgres:
    def __init__(self, directory: Path, port: int, url: str) -> None:
        self.directory, self.port, self.url = directory, port, url

    def pid(self) -> int | None:
        pid_file = self.directory / "data" / "postmaster.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), waiting until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        for _ in range(300):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def start(self) -> None:
        binaries = postgres_bin()
        _as_user([str(binaries / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-t", "60",
                  "-l", str(self.directory / "server.log"), "-o",
                  f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start"], timeout=90)


@contextmanager
def running_postgres(database: str = "kronos") -> Iterator[Postgres]:
    """A started cluster with ``database``; removed afterwards."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; make system-deps)")
    directory = Path(tempfile.mkdtemp(prefix="kronos-pg-"))
    user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
    if user:
        os.chown(directory, user.pw_uid, user.pw_gid)
    port = free_port()
    server = Postgres(directory, port, f"postgresql+psycopg://kronos@127.0.0.1:{port}/{database}")
    try:
        _as_user([str(binaries / "initdb"), "-D", str(directory / "data"), "-U", "kronos",
                  "-A", "trust", "--no-sync", "-E", "UTF8"], timeout=120)
        server.start()
        _as_user([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "kronos",
                  database], timeout=30)
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
