"""Outlier detection for one cluster, as Envoy's detector does it (passive health checking):
sans-IO, time given by the caller.

Per endpoint (by address) it counts consecutive 5xx responses and consecutive gateway errors
(502, 503, 504); a connection failure or a reset before the response counts as a 503 and a
timeout as a 504, unless local-origin errors are split out, when they have a counter of their
own (a connection made resets it). A non-5xx response resets both counters. When a counter
reaches its threshold (0: never) the endpoint is ejected at once, provided the ejected share
stays within `max_ejection_percent` (counting this one).

Ejections end at the interval sweeps, every `interval` from the detector's start: an endpoint
ejected at `t` returns at the first sweep at or after `t + base_ejection_time * backoff`
(at most `MAX_EJECTION_TIME`, Envoy's default), with its counters reset. `backoff` grows by
one at each ejection (while `backoff * base` is below `MAX_EJECTION_TIME + base`) and shrinks
by one at each sweep that finds the endpoint healthy at least `base_ejection_time` after it
returned, so an endpoint that keeps failing stays out longer and longer, and one that
recovered is forgiven step by step.

The detector has no timer of its own: every question (`ejected`) and report first runs the
sweeps due since the last one, so the outcome is the same as with a timer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ztunnel_py.model.http import OutlierDetection

__all__ = ["MAX_EJECTION_TIME", "LocalOrigin", "OutlierDetector"]

# Envoy's max_ejection_time default (Istio does not set it).
MAX_EJECTION_TIME = 300.0
# Sweeps run at once after a long quiet spell: enough for every ejection to run out and every
# backoff to shrink to zero; the rest are skipped.
_MAX_CATCH_UP = 10_000


class LocalOrigin(enum.Enum):
    """Failures the proxy sees itself rather than a status the endpoint answered."""

    CONNECT_FAILED = "connect-failed"
    RESET = "reset"
    TIMEOUT = "timeout"

    @property
    def status(self) -> int:
        """The status it counts as when local-origin errors are not split (Envoy's
        resultToHttpCode)."""
        return 504 if self is LocalOrigin.TIMEOUT else 503


@dataclass(slots=True)
class _Host:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    consecutive_local: int = 0
    ejected_at: float | None = None
    returned_at: float | None = None
    backoff: int = 0
    ejections: int = 0
    last_reason: str = ""


class OutlierDetector:
    def __init__(self, config: OutlierDetection, now: float) -> None:
        self.config = config
        self._hosts: dict[str, _Host] = {}
        self._next_sweep = now + config.interval
        self.ejections_total = 0
        self.overflowed = 0

    # --- the endpoint set ---------------------------------------------------------------------

    def sync(self, addresses: Iterable[str]) -> None:
        """The cluster's endpoints now: new ones start healthy, departed ones are forgotten."""
        current = set(addresses)
        for gone in [a for a in self._hosts if a not in current]:
            del self._hosts[gone]
        for address in current:
            self._hosts.setdefault(address, _Host())

    # --- questions -------------------------------------------------------------------------------

    def ejected(self, address: str, now: float) -> bool:
        self.sweep(now)
        host = self._hosts.get(address)
        return host is not None and host.ejected_at is not None

    def ejected_count(self) -> int:
        return sum(1 for h in self._hosts.values() if h.ejected_at is not None)

    # --- reports ---------------------------------------------------------------------------------

    def report_status(self, address: str, status: int, now: float) -> None:
        """An HTTP response from `address` (a local-origin failure mapped to its status when
        they are not split)."""
        self.sweep(now)
        host = self._hosts.get(address)
        if host is None:
            return
        config = self.config
        if status >= 500:
            if status in (502, 503, 504):
                host.consecutive_gateway += 1
                if host.consecutive_gateway == config.consecutive_gateway_errors:
                    self._eject(address, host, now, "consecutive gateway errors")
            else:
                host.consecutive_gateway = 0
            host.consecutive_5xx += 1
            if host.consecutive_5xx == config.consecutive_5xx:
                self._eject(address, host, now, "consecutive 5xx")
        else:
            host.consecutive_5xx = host.consecutive_gateway = 0

    def report_local(self, address: str, failure: LocalOrigin, now: float) -> None:
        if not self.config.split_local_origin:
            self.report_status(address, failure.status, now)
            return
        self.sweep(now)
        host = self._hosts.get(address)
        if host is None:
            return
        host.consecutive_local += 1
        if host.consecutive_local == self.config.consecutive_local_origin:
            self._eject(address, host, now, "consecutive local origin failures")

    def report_connected(self, address: str) -> None:
        """A connection to `address` was made (only counted when local origin is split)."""
        host = self._hosts.get(address)
        if host is not None and self.config.split_local_origin:
            host.consecutive_local = 0

    # --- ejection ------------------------------------------------------------------------------

    def _eject(self, address: str, host: _Host, now: float, reason: str) -> None:
        if host.ejected_at is not None:
            return
        share = 100.0 * (self.ejected_count() + 1) / len(self._hosts)
        if share > self.config.max_ejection_percent:
            self.overflowed += 1
            return
        base = self.config.base_ejection_time
        if host.backoff * base < MAX_EJECTION_TIME + base:
            host.backoff += 1
        host.ejected_at = now
        host.ejections += 1
        host.last_reason = reason
        self.ejections_total += 1

    def _ejection_time(self, host: _Host) -> float:
        base = self.config.base_ejection_time
        return min(base * host.backoff, max(base, MAX_EJECTION_TIME))

    def sweep(self, now: float) -> None:
        """Run the interval sweeps due at or before `now`."""
        interval = self.config.interval
        due = int((now - self._next_sweep) // interval) + 1
        if due <= 0:
            return
        if due > _MAX_CATCH_UP:
            self._next_sweep += (due - _MAX_CATCH_UP) * interval
            due = _MAX_CATCH_UP
        for _ in range(due):
            self._sweep_at(self._next_sweep)
            self._next_sweep += interval

    def _sweep_at(self, t: float) -> None:
        base = self.config.base_ejection_time
        for host in self._hosts.values():
            if host.ejected_at is None:
                if host.returned_at is not None and t - host.returned_at >= base and host.backoff:
                    host.backoff -= 1
                continue
            if t - host.ejected_at >= self._ejection_time(host):
                host.ejected_at = None
                host.returned_at = t
                host.consecutive_5xx = host.consecutive_gateway = host.consecutive_local = 0

    # --- the operator's view --------------------------------------------------------------------

    def dump(self, now: float) -> dict[str, Any]:
        self.sweep(now)
        return {
            "ejectionsTotal": self.ejections_total,
            "ejectionsOverflowed": self.overflowed,
            "endpoints": {
                address: {
                    "ejected": host.ejected_at is not None,
                    # seconds until it may return (at the first sweep after that)
                    "secondsLeft": (
                        round(self._ejection_time(host) - (now - host.ejected_at), 3)
                        if host.ejected_at is not None
                        else 0
                    ),
                    "ejections": host.ejections,
                    "backoff": host.backoff,
                    "consecutive5xx": host.consecutive_5xx,
                    "consecutiveGatewayErrors": host.consecutive_gateway,
                    "consecutiveLocalOriginFailures": host.consecutive_local,
                    "lastEjection": host.last_reason or None,
                }
                for address, host in sorted(self._hosts.items())
            },
        }
