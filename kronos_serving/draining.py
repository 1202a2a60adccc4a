"""Graceful shutdown: on SIGTERM report not-ready at once, keep serving for a grace period,
then let the server stop accepting, finish in-flight requests and exit."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable

log = logging.getLogger("kronos.drain")


class Drain:
    """Wraps the server's SIGTERM handler: readiness fails first, the server stops later."""

    def __init__(self, delay_s: float, on_drain: Callable[[], Any] | None = None) -> None:
        self.delay_s = max(0.0, delay_s)
        self.draining = False
        self.on_drain = on_drain  # called once, at the first SIGTERM

    def install(self) -> bool:
        """Chain onto the current SIGTERM handler; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        signal.signal(signal.SIGTERM, lambda sig, frame: self._on_sigterm(previous, sig, frame))
        return True

    def _on_sigterm(self, previous: Callable[..., Any], sig: int, frame: Any) -> None:
        if self.draining:  # a second SIGTERM: stop now
            previous(sig, frame)
            return
        self.draining = True
        if self.on_drain is not None:
            self.on_drain()
        log.info("draining", extra={"event": "draining", "delay_s": self.delay_s})
        if self.delay_s == 0:
            previous(sig, frame)
            return
        timer = threading.Timer(self.delay_s, previous, args=(sig, None))
        timer.daemon = True
        timer.start()
