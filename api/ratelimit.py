"""Per-key rate limits: a token bucket per API key, refilled at `rate_limit_per_minute / 60`
tokens a second up to `rate_limit_burst` (default: a minute's worth); a request takes a token,
and without one it is answered 429 with `Retry-After`.

The buckets live in this process's memory: with N server processes a key may send up to N times
the limit, and a restart refills every bucket. That is enough to stop a runaway client; a shared
limit would belong in front of the servers (a proxy) or in a shared store.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from metering.core.errors import RateLimited


class RateLimiter:
    def __init__(self, per_minute: int, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.capacity = float(burst if burst else per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def wait_seconds(self, key_id: int) -> float:
        """Take a token for this key: 0 when there was one, else the seconds until there is."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def check(self, key_id: int) -> None:
        """Raise 429 with `Retry-After` (whole seconds, at least 1) when the key has no token."""
        wait = self.wait_seconds(key_id)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise RateLimited(
                f"this API key sent more than {self.per_minute:,} requests a minute; retry after {seconds} s",
                detail={"limit_per_minute": self.per_minute, "retry_after_seconds": seconds},
                headers={"Retry-After": str(seconds)},
            )
