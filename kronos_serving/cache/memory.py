"""A bounded least-recently-used map of forecast results, per worker."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class LRU:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self.lock:
            if key not in self.entries:
                return None
            self.entries.move_to_end(key)
            return self.entries[key]

    def put(self, key: str, value: Any) -> None:
        if self.max_entries <= 0:
            return
        with self.lock:
            self.entries[key] = value
            self.entries.move_to_end(key)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)
