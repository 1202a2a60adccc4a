"""Readiness across a server's workers.

Each BentoML worker loads its own model and answers probes itself. With several workers, a probe
that reaches a loaded worker while a sibling is still loading would let traffic in early, and the
sibling would answer it 503. So each worker leaves a marker once it is loaded, and reports ready
only when every worker of its server (the children of the same arbiter) has left one.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("kronos.workers")


class SiblingReadiness:
    """Ready markers of the workers that share this process's parent (the arbiter)."""

    def __init__(self, workers: int, root: Path | None = None, pid: int | None = None,
                 parent: int | None = None) -> None:
        self.workers = workers
        self.pid = pid or os.getpid()
        base = root or Path(tempfile.gettempdir())
        self.directory = base / f"kronos-ready-{parent or os.getppid()}"

    def mark_ready(self, note: str = "") -> bool:
        """Leave this worker's marker (holding ``note``: "<worker index> <device>"). False if it
        cannot be written (read-only temp dir): then this worker stops waiting for its siblings
        rather than never turning ready."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / str(self.pid)).write_text(note)
        except OSError:
            self.workers = 1
            return False
        return True

    def unmark(self) -> None:
        """Remove this worker's marker (it is stopping on purpose: not a lost worker)."""
        (self.directory / str(self.pid)).unlink(missing_ok=True)

    def lost_workers(self) -> list[int]:
        """Siblings that marked themselves ready and died without unmarking (killed, crashed)."""
        if not self.directory.is_dir():
            return []
        return [int(m.name) for m in self.directory.iterdir()
                if m.name.isdigit() and not process_alive(int(m.name))]

    def ready_workers(self) -> int:
        """Workers that marked themselves ready and are still alive. Markers of dead workers stay:
        in a container they tell the siblings' watchdog that a worker was lost."""
        if not self.directory.is_dir():
            return 0
        return sum(1 for m in self.directory.iterdir()
                   if m.name.isdigit() and process_alive(int(m.name)))

    def worker_devices(self) -> dict[str, str]:
        """Worker index -> device, from the notes of the loaded workers of this server."""
        notes = []
        if self.directory.is_dir():
            for marker in self.directory.iterdir():
                if not (marker.name.isdigit() and process_alive(int(marker.name))):
                    continue
                try:
                    notes.append(marker.read_text().split(" ", 1))
                except OSError:
                    continue
        return dict(sorted((n[0], n[1]) for n in notes if len(n) == 2))

    def all_ready(self) -> bool:
        return self.workers <= 1 or self.ready_workers() >= self.workers


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def watch_siblings_in_container(siblings: SiblingReadiness, interval_s: float = 1.0) -> bool:
    """In a container, BentoML's arbiter does not restart a dead worker (``respawn`` is off when
    ``BENTOML_CONTAINERIZED`` is set): with one worker the server exits (status 1), with several
    the others would go on serving short-handed forever. So each worker watches its siblings'
    markers and, once one died without draining, exits with status 1 as well: the server exits
    and the orchestrator restarts the container. Outside containers the arbiter restarts workers.
    """
    from bentoml.serving import running_inside_container

    if not running_inside_container() or siblings.workers <= 1:
        return False

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            lost = siblings.lost_workers()
            if lost:
                log.error("a sibling worker died: exiting so the container is restarted",
                          extra={"event": "worker_lost", "workers": lost})
                logging.shutdown()
                os._exit(1)

    threading.Thread(target=watch, name="kronos-sibling-watch", daemon=True).start()
    return True
