"""A small, bounded, thread-safe cache with a time to live: the agent page's figures that are
computed from every usage event of the last 30 days (seconds stale at most, by design).

Pure: no database, no HTTP. Times are passed in (monotonic seconds), so tests need no sleeps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """At most `size` entries, each kept `ttl` seconds; the least recently used goes first."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, now: float) -> V | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            stored_at, value = found
            if now - stored_at >= self.ttl or now < stored_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def put(self, key: K, value: V, now: float) -> None:
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
