"""Rate-limited log lines: an attacker must not be able to flood the log (or the disk under it).

`LogLimiter.allow(key)` lets through at most `burst` lines per `interval` seconds for each key
(a token bucket refilled continuously) and counts the rest; the next line let through reports
how many were left out, so nothing happens silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_BURST = 20
DEFAULT_INTERVAL = 10.0
_MAX_KEYS = 1024  # keys are few (a kind, a direction); bound them anyway


class LogLimiter:
    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = burst / interval
        self.clock = clock
        # key -> [tokens, last refill, lines suppressed since the last one let through]
        self._buckets: dict[str, list[float]] = {}

    def allow(self, key: str) -> int | None:
        """None: suppress this line. Otherwise log it, saying how many lines of `key` were
        suppressed before it (0 for none)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = [float(self.burst), now, 0.0]
        tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            bucket[2] += 1
            return None
        bucket[0] = tokens - 1
        suppressed = int(bucket[2])
        bucket[2] = 0
        return suppressed
