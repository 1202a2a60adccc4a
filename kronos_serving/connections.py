"""Connection limits for the worker's uvicorn server (BentoML starts it without them).

uvicorn closes a connection idle after a response (``timeout_keep_alive``), but not one that never
completes a request: a client that opens sockets and sends nothing (or a header a byte a minute)
holds them until the worker runs out of file descriptors and hangs. This wraps uvicorn's HTTP
protocol class (h11 or httptools) so that each connection must complete its request headers
within ``header_timeout_s`` and its body within ``body_timeout_s``, and a connection past
``max_connections`` open in this worker is answered 503 and closed. Every close is counted in
``kronos_connections_closed_total{reason}`` and logged (at most once a second per reason).
"""
from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kronos.connections")
_REFUSAL_BODY = b'{"error": "too many open connections on this worker"}'
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1"
           b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: int
    max_connections: int


def limits_from(settings: Any) -> ConnectionLimits:
    """The limits the service settings ask for."""
    return ConnectionLimits(settings.header_timeout_s, settings.body_timeout_s,
                            settings.idle_timeout_s, connection_cap(settings.max_connections))


def connection_cap(configured: int) -> int:
    """``configured`` (0: no own cap), never above 80% of this process's file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = max(16, int(soft * 0.8)) if soft != resource.RLIM_INFINITY else 1 << 20
    return min(configured, ceiling) if configured > 0 else ceiling


class _CloseLog:
    """Counts closes per reason in the metric; logs a summary at most once a second."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}
        self.logged_at: dict[str, float] = {}

    def closed(self, reason: str, open_connections: int) -> None:
        from .metrics import METRICS

        METRICS.connections_closed.labels(reason=reason).inc()
        self.pending[reason] = self.pending.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged_at.get(reason, 0.0) >= 1.0:
            log.warning("connection closed by the guard", extra={
                "event": "connection_closed", "reason": reason, "count": self.pending.pop(reason),
                "open_connections": open_connections})
            self.logged_at[reason] = now


CLOSES = _CloseLog()


def guarded(protocol_class: type, limits: ConnectionLimits) -> type:
    """A subclass of uvicorn's protocol with read deadlines and the connection cap."""

    class GuardedProtocol(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._seen_cycle: Any = None
            if len(self.connections) > limits.max_connections:
                CLOSES.closed("connection_limit", len(self.connections))
                transport.write(REFUSAL)
                transport.close()
                return
            self._arm(limits.header_timeout_s, "header_timeout")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            if cycle is not self._seen_cycle:  # a new request's headers are complete
                self._seen_cycle = cycle
                self._arm(limits.body_timeout_s, "body_timeout") if cycle.more_body else self._disarm()
            elif cycle is not None and not cycle.response_complete:
                if not cycle.more_body:
                    self._disarm()  # body complete: the handler runs, bounded by timeout_s
            elif self._deadline is None:  # the first bytes of the next request on this connection
                self._arm(limits.header_timeout_s, "header_timeout")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, reason)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, reason: str) -> None:
            self._deadline = None
            CLOSES.closed(reason, len(self.connections))
            self.transport.close()

    GuardedProtocol.__name__ = f"Guarded{protocol_class.__name__}"
    return GuardedProtocol


def install(limits: ConnectionLimits) -> None:
    """Make every uvicorn server started in this process use the guarded protocol."""
    import uvicorn.config

    config_class = uvicorn.config.Config
    original = getattr(config_class, "_kronos_original_load", config_class.load)

    def load(self: Any) -> None:
        original(self)
        self.timeout_keep_alive = limits.idle_timeout_s
        self.http_protocol_class = guarded(self.http_protocol_class, limits)

    config_class._kronos_original_load = original
    config_class.load = load
