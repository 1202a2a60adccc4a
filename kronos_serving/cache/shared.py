"""The optional cache shared by replicas: Redis (``KRONOS_CACHE_URL``). Never fails a request."""
from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("kronos.cache")
PREFIX = "kronos:forecast:"


class RedisStore:
    def __init__(self, url: str, ttl_s: float) -> None:
        import redis.asyncio as redis

        self.url_host = url.split("@")[-1]  # for logs: never the password
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.ttl_ms = int(ttl_s * 1000) if ttl_s > 0 else None

    async def get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.client.get(PREFIX + key)
        except Exception as exc:  # an unreachable cache is a miss, not an error
            log.warning("shared cache unreachable", extra={"event": "cache_error", "op": "get",
                                                           "cache": self.url_host, "error": str(exc)})
            return None
        return json.loads(raw) if raw is not None else None

    async def put(self, key: str, value: dict[str, Any]) -> None:
        try:
            await self.client.set(PREFIX + key, json.dumps(value), px=self.ttl_ms)
        except Exception as exc:
            log.warning("shared cache unreachable", extra={"event": "cache_error", "op": "set",
                                                           "cache": self.url_host, "error": str(exc)})
