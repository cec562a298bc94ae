"""Exponential backoff: the one retry schedule of every reconnect and retry loop.

Sans-IO: `next_delay()` returns how long to wait before the next attempt and advances the
schedule; `reset()` starts it over (after a success). Each user keeps its own documented
schedule by its parameters:

- certificate requests (`identity/manager.py`): 500 ms doubling, jitter 0.2, capped at 150 s;
- the xDS stream (`xds/client.py`): 20 ms doubling to 15 s after errors, no jitter (ztunnel's
  10 ms, doubled before the first wait);
- the Kubernetes list/watch (`controlplane/sources/kube.py`): 1 s doubling to 30 s;
- the load generator's reconnects (`bench/loadgen.py`): 10 ms doubling to 500 ms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays in seconds: `initial`, then multiplied by `multiplier` per attempt up to `cap`,
    each moved by up to +-`jitter` (a fraction) at random and never above `cap`."""

    initial: float
    cap: float
    multiplier: float = 2.0
    jitter: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    _current: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        self._current = (
            self.initial if self._current == 0 else min(self._current * self.multiplier, self.cap)
        )
        if not self.jitter:
            return self._current
        spread = self._current * self.jitter
        return min(self._current + self.rng.uniform(-spread, spread), self.cap)

    def reset(self) -> None:
        self._current = 0.0
