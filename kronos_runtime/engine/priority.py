"""Who goes first when the engine admits work: interactive callers before background work."""
from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    """Lower runs first. Sync HTTP is interactive; jobs, queue messages and backtests are background."""

    INTERACTIVE = 0
    BACKGROUND = 1

    @classmethod
    def parse(cls, value: "str | int | Priority") -> "Priority":
        """``"interactive"``/``"background"`` (any case) or 0/1."""
        if isinstance(value, str) and not value.strip().isdigit():
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"priority must be 'interactive' or 'background', got {value!r}") from None
        return cls(int(value))
