"""Token-bucket rate limits shared by every worker of a server, and across replicas with Redis.

- ``SharedBuckets``: a SQLite table in a directory named after the workers' parent (the arbiter),
  as ``worker_readiness`` finds sibling workers; one bucket per client, refilled continuously.
  Rows whose bucket is full again (idle a minute) are pruned, and the table is capped at
  ``max_clients`` rows (the least recently seen go first), so it stays bounded.
- ``RedisBuckets`` (``rate_limit_url: redis://...``): the same bucket as one atomic Lua script per
  request, keys expiring once full; every replica pointing at that Redis shares the limit. If Redis
  cannot be reached, the server's shared buckets answer instead (and a warning is logged).
- ``client_address``: the peer address, or the ``X-Forwarded-For`` entry added by the last proxy
  we trust (``trusted_proxies``: addresses or CIDRs); from any other peer the header is ignored.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("kronos.rate_limits")
PRUNE_EVERY = 500  # decisions between two prunes

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> list[Network]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; ValueError names a bad entry."""
    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"setting trusted_proxies: {exc}") from None
    return networks


def _trusted(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str, forwarded_for: bytes | None, proxies: list[Network]) -> str:
    """The client a request comes from: walk ``X-Forwarded-For`` right to left while the hop that
    added the entry is a trusted proxy; the first untrusted hop is the client."""
    if not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        client = hop
        if not _trusted(hop, proxies):
            break
    return client


def _take(tokens: float, elapsed: float, rate: float, capacity: float,
          amount: float = 1.0) -> tuple[float, int]:
    """Refill, then take ``amount`` tokens (at most a full bucket): (tokens left, 0) or
    (tokens, seconds to wait)."""
    tokens = min(capacity, tokens + max(0.0, elapsed) * rate)
    amount = min(amount, capacity)
    if tokens >= amount:
        return tokens - amount, 0
    return tokens, max(1, math.ceil((amount - tokens) / rate))


class SharedBuckets:
    """Buckets in SQLite, shared by the processes that open the same file."""

    def __init__(self, per_minute: float, path: Path, max_clients: int = 100_000) -> None:
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self.path, self.max_clients = path, max_clients
        self.lock = threading.Lock()
        self.decisions = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS buckets "
                        "(client TEXT PRIMARY KEY, tokens REAL, updated REAL)")

    @classmethod
    def for_this_server(cls, per_minute: float, parent: int | None = None,
                        name: str = "buckets") -> SharedBuckets:
        """The buckets of the server this worker belongs to (its siblings open the same file)."""
        directory = Path(tempfile.gettempdir()) / f"kronos-rate-{parent or os.getppid()}"
        return cls(per_minute, directory / f"{name}.sqlite")

    def retry_after_now(self, client: str, amount: float = 1.0) -> int:
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT tokens, updated FROM buckets WHERE client = ?",
                                      (client,)).fetchone()
                tokens, updated = row if row else (self.capacity, now)
                tokens, wait = _take(tokens, now - updated, self.rate, self.capacity, amount)
                self.db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)",
                                (client, tokens, now))
                self.decisions += 1
                if self.decisions % PRUNE_EVERY == 0:
                    self._prune(now)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return wait

    def _prune(self, now: float) -> None:
        """Drop buckets that are full again, then the oldest past ``max_clients``."""
        self.db.execute("DELETE FROM buckets WHERE updated < ?", (now - self.capacity / self.rate,))
        self.db.execute("DELETE FROM buckets WHERE client IN (SELECT client FROM buckets "
                        "ORDER BY updated DESC LIMIT -1 OFFSET ?)", (self.max_clients,))

    def clients(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM buckets").fetchone()[0]

    async def retry_after(self, client: str, amount: float = 1.0) -> int:
        """0 if the request may go now (``amount`` tokens are taken), else seconds to wait."""
        return await asyncio.to_thread(self.retry_after_now, client, amount)


TOKEN_BUCKET_LUA = """
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local amount = math.min(tonumber(ARGV[3] or '1'), capacity)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or capacity
local updated = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= amount then tokens = tokens - amount else wait = math.max(1, math.ceil((amount - tokens) / rate)) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return wait
"""


class RedisBuckets:
    """Buckets in Redis (shared across replicas); the server's own buckets when Redis is down."""

    def __init__(self, per_minute: float, url: str, fallback: SharedBuckets,
                 prefix: str = "kronos:rate:") -> None:
        import redis.asyncio

        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5,
                                                   socket_connect_timeout=0.5)
        self.script = self.client.register_script(TOKEN_BUCKET_LUA)
        self.fallback, self.prefix = fallback, prefix
        self.warned_at = 0.0

    async def retry_after(self, client: str, amount: float = 1.0) -> int:
        try:
            return int(await self.script(keys=[self.prefix + client],
                                         args=[self.rate, self.capacity, amount]))
        except Exception as exc:  # noqa: BLE001 - any Redis failure: limit locally instead
            if time.monotonic() - self.warned_at > 10:
                self.warned_at = time.monotonic()
                log.warning("rate-limit Redis unreachable: limiting per server",
                            extra={"event": "rate_limit_redis_unavailable",
                                   "error": f"{type(exc).__name__}: {exc}"})
            return await self.fallback.retry_after(client, amount)


def make_limiter(per_minute: float, redis_url: str = "", name: str = "buckets"
                 ) -> SharedBuckets | RedisBuckets | None:
    """The limiter the settings ask for (None when off); ``name`` keeps limiters apart."""
    if per_minute <= 0:
        return None
    shared = SharedBuckets.for_this_server(per_minute, name=name)
    return (RedisBuckets(per_minute, redis_url, shared, prefix=f"kronos:{name}:")
            if redis_url else shared)
