"""The cache in front of :meth:`ForecastRunner.run`: per-worker LRU, then Redis when configured.

A request is answered from the cache only when every series in it is deterministic and cached
for the variant it is routed to; otherwise it runs as usual and its deterministic results are
stored, under the key of the model version that actually served each one.
"""
from __future__ import annotations

from typing import Any

from kronos_runtime import InputError

from ..forecasting import ForecastRunner
from ..metrics import METRICS
from ..schemas import SingleRequest
from ..settings import Settings
from .keys import cache_key, is_deterministic
from .memory import LRU
from .shared import RedisStore


class ForecastCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.memory = LRU(settings.cache_max_entries)
        self.shared = RedisStore(settings.cache_url, settings.cache_ttl_s) if settings.cache_url else None

    @property
    def enabled(self) -> bool:
        return self.settings.cache_max_entries > 0 or self.shared is not None

    async def get(self, key: str) -> dict[str, Any] | None:
        found = self.memory.get(key)
        if found is None and self.shared is not None:
            found = await self.shared.get(key)
            if found is not None:
                self.memory.put(key, found)
        return found

    async def put(self, key: str, value: dict[str, Any]) -> None:
        self.memory.put(key, value)
        if self.shared is not None:
            await self.shared.put(key, value)

    async def lookup(self, runner: ForecastRunner, bodies: list[SingleRequest]) -> list[dict] | None:
        """Every body's cached result for the variant it is routed to, or None."""
        found = []
        for body in bodies:
            try:
                variant = runner.variant_for(body)
            except InputError:  # an unknown pinned version: the runner answers 400
                return None
            cached = await self.get(cache_key(body, variant.source.name, variant.version, self.settings))
            if cached is None:
                return None
            found.append(cached)
        return found

    async def run(self, runner: ForecastRunner, bodies: list[SingleRequest], request_id: str,
                  index_errors: bool, **options: Any) -> tuple[list[dict[str, Any]], str]:
        """``runner.run`` through the cache: (results, ``hit`` | ``miss`` | ``bypass``)."""
        if not self.enabled or not bodies or not all(is_deterministic(b, self.settings) for b in bodies):
            METRICS.cache_lookups.labels(result="bypass").inc()
            return await runner.run(bodies, request_id, index_errors, **options), "bypass"
        cached = await self.lookup(runner, bodies)
        if cached is not None:
            METRICS.cache_lookups.labels(result="hit").inc()
            return [{**result, "request_id": request_id} for result in cached], "hit"
        METRICS.cache_lookups.labels(result="miss").inc()
        results = await runner.run(bodies, request_id, index_errors, **options)
        for body, result in zip(bodies, results):
            await self.put(cache_key(body, result["model"], result["model_version"], self.settings), result)
        return results, "miss"
