"""Schema (pydantic) errors answered like every other input error: ``error`` and ``field``.

BentoML answers them with ``{"error": "1 validation error for ...", "detail": [...]}`` before
our handler runs; this ASGI middleware adds the field path of the first error (e.g.
``batch[0].data[3][1]``), a readable message and the request id, keeping ``detail`` as it was,
and counts and logs the rejection like every other request.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Awaitable, Callable

from .accounting import record_request

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def field_path(location: list[Any]) -> str:
    """``["batch", 0, "data", 3]`` -> ``batch[0].data[3]``; an empty location is the body."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def is_schema_error(body: Any) -> bool:
    """BentoML's pydantic answer: a ``detail`` list and no ``field`` of ours."""
    return (isinstance(body, dict) and "field" not in body and isinstance(body.get("detail"), list)
            and bool(body["detail"]))


def with_field(body: dict[str, Any]) -> dict[str, Any]:
    """A schema error's body with ``field`` (the first error's path) and a readable ``error``."""
    details = body["detail"]
    first = details[0]
    field = field_path(list(first.get("loc") or []))
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return {**body, "error": f"{field}: {first.get('msg', 'invalid')}{more}", "field": field}


class ValidationErrorMiddleware:
    """Rewrites 400 JSON bodies that carry pydantic ``detail`` but no ``field``."""

    def __init__(self, app: Callable, path_prefix: str = "/v1/predict") -> None:
        self.app, self.path_prefix = app, path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.path_prefix):
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                if await self._send_rewritten(send, start, b"".join(chunks), request_id):
                    record_request(scope["path"], request_id, 400, time.perf_counter() - started,
                                   error="schema validation failed")

        await self.app(scope, receive, capture)

    @staticmethod
    async def _send_rewritten(send: Send, start: dict, raw: bytes, request_id: str) -> bool:
        """Send the 400 on; True when it was a schema error (and was rewritten)."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not is_schema_error(body):
            await send(start)
            await send({"type": "http.response.body", "body": raw})
            return False
        raw = json.dumps({**with_field(body), "request_id": request_id}).encode()
        headers = [(k, v) for k, v in start.get("headers", [])
                   if k.lower() not in (b"content-length", b"x-request-id")]
        headers.append((b"content-length", str(len(raw)).encode()))
        headers.append((b"x-request-id", request_id.encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
        return True
