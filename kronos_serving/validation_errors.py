"""Schema (pydantic) errors answered like every other input error: ``error`` and ``field``.

BentoML answers them with ``{"error": "1 validation error for ...", "detail": [...]}``; this
ASGI middleware adds the field path of the first error (e.g. ``batch[0].data[3][1]``) and a
readable message, keeping ``detail`` as it was.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def field_path(location: list[Any]) -> str:
    """``["batch", 0, "data", 3]`` -> ``batch[0].data[3]``; an empty location is the body."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def with_field(body: dict[str, Any]) -> dict[str, Any]:
    details = body.get("detail")
    if "field" in body or not isinstance(details, list) or not details:
        return body
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

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                await self._send_rewritten(send, start, b"".join(chunks))

        await self.app(scope, receive, capture)

    @staticmethod
    async def _send_rewritten(send: Send, start: dict, raw: bytes) -> None:
        try:
            body = json.loads(raw)
            if isinstance(body, dict):
                raw = json.dumps(with_field(body)).encode()
        except ValueError:
            pass
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": raw})
