"""Runtime patches to BentoML 1.4.39, applied by the service at import (in every worker).

1. ``TimeoutMiddleware`` (bentoml/_internal/server/http/traffic.py) starts a ``loop.call_later``
   timer per request and never cancels it. The timer handle holds a copy of the request's
   contextvars (tracing span, request context) for ``timeout + 30`` s after the request ended:
   a flood of cheap requests grows the worker by gigabytes. The patched ``__call__`` cancels the
   timer when the request ends. Upstream fix: ``docs/upstream/bentoml-timeout-timer.patch``.
2. ``JSONSerde.parse_request`` (_bentoml_impl/serde.py) parses and validates the whole body on the
   event loop in one go (up to 0.3 s for a 16 MB body): bodies over ``offload_bytes`` go through
   ``kronos_serving.bodies`` instead, which yields to the loop every few milliseconds.

Both are pinned to the BentoML version they were written against: on another version they are not
applied and a warning says so (check whether the upstream code still needs them).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import bentoml

log = logging.getLogger("kronos.patches")
PINNED_VERSION = "1.4.39"


def timeout_call_that_cancels_its_timer():
    """TimeoutMiddleware.__call__ as upstream, plus ``timer.cancel()`` once the request ends."""
    from starlette.responses import JSONResponse

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()  # the upstream code leaves it (and the request's context) alive
    return __call__


def parse_request_off_the_loop(original: Any, offload_bytes: int, max_list_items: int):
    """JSONSerde.parse_request: small bodies as before, large ones cooperatively."""
    from _bentoml_impl.serde import Payload

    from .bodies import parse_and_validate

    async def parse_request(self, request, cls):
        if getattr(cls, "multipart_fields", None):
            return await original(self, request, cls)
        body = await request.body()
        if len(body) < offload_bytes:
            return self.deserialize_model(Payload((body,), metadata=request.headers), cls)
        return await parse_and_validate(body, cls, max_list_items)
    return parse_request


def apply(offload_bytes: int, max_list_items: int) -> bool:
    """Apply both patches (once per process); False (with a warning) on another BentoML."""
    if bentoml.__version__ != PINNED_VERSION:
        log.warning("BentoML patches not applied", extra={
            "event": "bentoml_patches_skipped", "version": bentoml.__version__,
            "pinned": PINNED_VERSION})
        return False
    from _bentoml_impl.serde import JSONSerde
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if not getattr(TimeoutMiddleware, "_kronos_patched", False):
        TimeoutMiddleware.__call__ = timeout_call_that_cancels_its_timer()
        TimeoutMiddleware._kronos_patched = True
    original = getattr(JSONSerde, "_kronos_original_parse_request", JSONSerde.parse_request)
    JSONSerde._kronos_original_parse_request = original
    JSONSerde.parse_request = parse_request_off_the_loop(original, offload_bytes, max_list_items)
    return True
