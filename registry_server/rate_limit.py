"""A per-key token bucket, in memory, bounded in the number of keys it tracks.

Pure: the caller passes the clock, so tests and the route decide what "now" is.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from mcpz.errors import McpzError

MAX_KEYS = 100_000
"""Keys tracked at most; the least recently seen is forgotten first (it gets a full bucket back)."""


class RateLimited(McpzError):
    """Too many requests from one client: answered 429 with Retry-After."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, hint=f"retry in {retry_after_header(retry_after)} s")
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """At most `limit` hits per `window` seconds per key, refilled continuously."""

    def __init__(self, limit: int, window: float, *, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.rate = limit / window
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # Sync routes run in a thread pool: two hits of one key must not both take the last token.
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds until one is available."""
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(float(self.limit), now)
            else:
                elapsed = max(0.0, now - bucket.at)
                bucket = _Bucket(min(float(self.limit), bucket.tokens + elapsed * self.rate), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
