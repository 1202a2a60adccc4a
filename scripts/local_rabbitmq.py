"""A real RabbitMQ broker (Debian's ``rabbitmq-server``) on free 127.0.0.1 ports, for tests.

Its own epmd, node name, data and log directories under a temp dir, so it never touches a system
broker; stopped by PID (SIGTERM, then SIGKILL). ``restart()`` keeps the data (durable queues and
persistent messages survive, as after a real broker restart).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import aio_pika

from local_server import free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def installed() -> bool:
    return SERVER.exists() and shutil.which("epmd") is not None


class Broker:
    """One broker node; ``url`` is its AMQP URL (guest may log in over loopback)."""

    def __init__(self, root: Path, config: str = "") -> None:
        self.root = root
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n{config}")
        (root / "enabled_plugins").write_text("[].\n")
        self.env = {**os.environ, "HOME": str(root), "RABBITMQ_NODENAME": f"kronos{self.port}@localhost",
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
                    "RABBITMQ_MNESIA_BASE": str(root / "mnesia"), "RABBITMQ_LOG_BASE": str(root / "log"),
                    "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                    "RABBITMQ_LOGS": str(root / "log" / "rabbit.log")}
        self.epmd: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         env=self.env, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with (self.root / "server.out").open("a") as out:
            self.server = subprocess.Popen([str(SERVER)], env=self.env, cwd=self.root, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while not asyncio.run(self._answers()):
            if self.server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start:\n{self.log()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the node (its whole process group, by PID); epmd keeps running for a restart."""
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait()

    def log(self) -> str:
        logs = [self.root / "server.out", self.root / "log" / "rabbit.log"]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    async def _answers(self) -> bool:
        try:  # a TCP connect first: aio-pika logs every refused connection
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            connection = await aio_pika.connect(self.url, timeout=3)
        except Exception:
            return False
        await connection.close()
        return True


@contextmanager
def running_rabbitmq(root: Path, config: str = "") -> Iterator[Broker]:
    broker = Broker(root, config)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
