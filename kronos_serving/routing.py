"""A/B traffic: choose a model variant by pin, sticky key or weight."""
from __future__ import annotations

import hashlib
import random
from typing import Sequence, TypeVar

from kronos_runtime.errors import InputError

V = TypeVar("V")


def parse_variants(spec: str) -> list[tuple[str, float]]:
    """``"tag=70,tag2=30"`` -> [(tag, 70.0), (tag2, 30.0)]; a missing weight counts as 1."""
    variants = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        tag, _, weight = part.partition("=")
        value = float(weight) if weight else 1.0
        if value < 0:
            raise ValueError(f"variant {tag}: negative weight")
        variants.append((tag.strip(), value))
    if variants and sum(w for _, w in variants) <= 0:
        raise ValueError("variants: weights sum to zero")
    return variants


def sticky_fraction(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (same key, same number, on every worker)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


def pick_weighted(items: Sequence[V], weights: Sequence[float], fraction: float) -> V:
    total, point = sum(weights), fraction * sum(weights)
    for item, weight in zip(items, weights):
        if point < weight:
            return item
        point -= weight
    return items[-1] if total else items[0]


def choose(items: Sequence[V], weights: Sequence[float], names: Sequence[set[str]],
           pinned: str | None, sticky_key: str | None) -> V:
    """The pinned variant (any of its names), else by sticky key, else at random by weight."""
    if pinned:
        for item, aliases in zip(items, names):
            if pinned in aliases:
                return item
        known = sorted({min(a, key=len) for a in names})
        raise InputError("model_version", f"unknown model version {pinned!r}; serving {known}")
    fraction = sticky_fraction(sticky_key) if sticky_key else random.random()
    return pick_weighted(items, weights, fraction)
