"""ASGI guard in front of every route: API keys, body size and type, per-key rate limits.

Health and readiness stay open; metrics are open unless ``protect_metrics`` is set. Keys come as
``Authorization: Bearer <key>`` (what the BentoML clients send) or ``X-API-Key``, and are compared
in constant time. The rate limit is per key (per client address without keys), shared by the
server's workers (and replicas, with Redis): see ``rate_limits``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Awaitable, Callable

from .rate_limits import client_address, make_limiter, parse_networks

OPEN_PATHS = ("/v1/healthz", "/v1/readyz", "/healthz", "/readyz", "/livez")
OPEN_PREFIX = "/ui"  # the static page (its API calls carry the key the user types in)
METRICS_PATHS = ("/metrics", "/v1/metrics")
JSON_ONLY_PREFIXES = ("/v1/predict", "/v1/jobs")
BODY_METHODS = ("POST", "PUT", "PATCH")
KEY_ID_STATE = "kronos_key_id"  # scope["state"] entry: the caller's key id (a hash, never the key)
DOC_PATHS = ("/", "/docs.json")         # Swagger UI and the OpenAPI document: no secrets in them
DOC_PREFIX = "/static_content/"         # Swagger UI's scripts and styles

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def parse_keys(text: str) -> list[bytes]:
    return [k.strip().encode() for k in text.split(",") if k.strip()]


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key")


def is_json(content_type: bytes | None) -> bool:
    """No type (read as JSON) or application/json, application/*+json, with any parameters."""
    if not content_type:
        return True
    kind = content_type.split(b";")[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


def key_id(key: bytes) -> str:
    """A stable id for an API key (jobs and records are owned by it); not the key itself."""
    return hashlib.sha256(b"kronos-key-id:" + key).hexdigest()[:16]


def caller_key_id(scope: Scope) -> str | None:
    """The authenticated caller's key id, None when API keys are off."""
    return (scope.get("state") or {}).get(KEY_ID_STATE)


def key_matches(candidate: bytes, keys: list[bytes]) -> bool:
    """Constant-time comparison against every configured key."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


async def reply(send: Send, status: int, error: str, headers: dict[str, str] | None = None,
                field: str | None = None) -> None:
    body = json.dumps({"error": error, "field": field} if field else {"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Rejects unauthenticated (401), oversized (413), non-JSON (415) and over-rate (429) requests."""

    def __init__(self, app: Callable, api_keys: str = "", max_body_bytes: int = 0,
                 rate_limit_per_minute: int = 0, protect_metrics: bool = False,
                 rate_limit_url: str = "", trusted_proxies: str = "") -> None:
        self.app = app
        self.keys = parse_keys(api_keys)
        self.max_body_bytes = max_body_bytes
        self.limiter = make_limiter(rate_limit_per_minute, rate_limit_url)
        self.proxies = parse_networks(trusted_proxies)
        self.protect_metrics = protect_metrics

    def _is_open(self, path: str) -> bool:
        return (path in OPEN_PATHS or path == OPEN_PREFIX or path.startswith(OPEN_PREFIX + "/")
                or path in DOC_PATHS or path.startswith(DOC_PREFIX)
                or (path in METRICS_PATHS and not self.protect_metrics))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = presented_key(headers)
        if self.keys and (key is None or not key_matches(key, self.keys)):
            return await reply(send, 401, "missing or invalid API key",
                               {"WWW-Authenticate": 'Bearer realm="kronos"'})
        if self.keys:
            scope.setdefault("state", {})[KEY_ID_STATE] = key_id(key)
        if self.limiter:
            peer = (scope.get("client") or ("?",))[0]
            client = hashlib.sha256(key).hexdigest() if key else client_address(
                peer, headers.get(b"x-forwarded-for"), self.proxies)
            wait = await self.limiter.retry_after(client)
            if wait:
                return await reply(send, 429, "rate limit exceeded", {"Retry-After": str(wait)})
        if scope.get("method") in BODY_METHODS and scope.get("path", "").startswith(
                JSON_ONLY_PREFIXES) and not is_json(
                headers.get(b"content-type")):
            return await reply(send, 415, "Content-Type must be application/json",
                               field="Content-Type")
        if self.max_body_bytes:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                return await reply(send, 413, f"request body over {self.max_body_bytes} bytes")
            if declared is None:  # chunked: read it (up to the limit), then replay it
                messages, size = [], 0
                while True:
                    message = await receive()
                    messages.append(message)
                    size += len(message.get("body", b""))
                    if size > self.max_body_bytes:
                        return await reply(send, 413, f"request body over {self.max_body_bytes} bytes")
                    if message["type"] != "http.request" or not message.get("more_body"):
                        break
                receive = self._replay(messages, receive)
        await self.app(scope, receive, send)

    @staticmethod
    def _replay(messages: list[dict], receive: Receive) -> Receive:
        async def replayed() -> dict:
            return messages.pop(0) if messages else await receive()
        return replayed
