"""One upstream cluster of a proxy (a service, subset and port): its traffic policy and the state
that policy keeps, sans-IO (the caller passes the time).

- **Endpoint choice** (`choose`): outlier detection leaves out ejected endpoints, unless fewer
  than `min_health_percent` of them are healthy (Envoy's panic mode: all are used); none left
  is no healthy upstream. A retry avoids the endpoints already tried while others remain
  (Envoy's `previous_hosts` predicate, which istiod sets). The balancer picks among the rest.
- **Circuit breakers** (Envoy's, per cluster): the counters of connections, requests waiting
  for a connection (pending), upstream requests in flight and retries in flight, checked against
  the connection pool limits (`can_connect`, `can_queue`, `can_request`, `can_retry`). The
  upstream pool and the router keep the counters and count the overflows in `stats`.
- **Requests in flight per endpoint**, for the least-request balancer.
- **Outcomes** of each attempt, for outlier detection.

`dump` is the cluster's part of the proxy's `/config_dump`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ztunnel_py.http.balancer import Endpoint, HashBalancer, Pick, balancer_for
from ztunnel_py.http.outlier import LocalOrigin, OutlierDetector
from ztunnel_py.model.http import TrafficPolicy

_NONE: frozenset[str] = frozenset()

__all__ = ["Cluster"]


class Cluster:
    def __init__(
        self,
        name: str,
        policy: TrafficPolicy,
        *,
        rng: random.Random,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.policy = policy
        # the time its drivers pass in (`now`): the one clock of the proxy's clusters
        self.clock = clock
        self.balancer = balancer_for(policy.load_balancer, rng)
        od = policy.outlier_detection
        self.outlier = OutlierDetector(od, clock()) if od is not None else None
        self._known: frozenset[str] = frozenset()
        # requests in flight by endpoint address
        self.active: dict[str, int] = {}
        # what a balancer other than a hash one goes by: the same for every pick
        self._pick = Pick(self.active)
        # circuit breaker counters: connections open or being made, requests waiting for a
        # connection, upstream requests in flight (the waiting ones included), retries in flight
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        # Envoy's cluster stats of the same names
        self.stats = {
            "upstream_rq_total": 0,
            "upstream_cx_total": 0,
            "upstream_cx_overflow": 0,
            "upstream_rq_pending_overflow": 0,
            "upstream_rq_overflow": 0,
            "upstream_rq_retry": 0,
            "upstream_rq_retry_overflow": 0,
        }

    # --- endpoints ----------------------------------------------------------------------------

    def choose(
        self,
        endpoints: Sequence[Endpoint],
        tried: Collection[str],
        key: int | None,
        now: float,
    ) -> Endpoint | None:
        """The endpoint for an attempt, or None when none is healthy."""
        if not endpoints:
            return None
        healthy: Sequence[Endpoint] = endpoints
        outlier = self.outlier
        if outlier is not None:
            addresses = frozenset(e.address for e in endpoints)
            if addresses != self._known:
                outlier.sync(addresses)
                self._known = addresses
            healthy = [e for e in endpoints if not outlier.ejected(e.address, now)]
            panic = outlier.config.min_health_percent
            if 100 * len(healthy) < panic * len(endpoints):
                healthy = list(endpoints)
            if not healthy:
                return None
        avoid = frozenset(tried).intersection(e.address for e in healthy) if tried else _NONE
        if len(avoid) == len(healthy):
            avoid = _NONE
        if isinstance(self.balancer, HashBalancer):
            return self.balancer.pick(healthy, Pick(self.active, key, avoid))
        # a first attempt (nearly all) has nothing to avoid: the endpoints go as they are
        allowed = [e for e in healthy if e.address not in avoid] if avoid else healthy
        return self.balancer.pick(allowed, self._pick)

    @property
    def idle(self) -> bool:
        """Nothing in flight and no connection: forgetting it loses only its history."""
        return not (self.requests or self.connections or self.pending or self.retries)

    # --- circuit breakers ---------------------------------------------------------------------

    @staticmethod
    def _under(count: int, limit: int) -> bool:
        return limit == 0 or count < limit

    def can_connect(self) -> bool:
        return self._under(self.connections, self.policy.connection_pool.max_connections)

    def can_queue(self) -> bool:
        return self._under(self.pending, self.policy.connection_pool.max_pending_requests)

    def can_request(self) -> bool:
        return self._under(self.requests, self.policy.connection_pool.max_requests)

    def can_retry(self) -> bool:
        """Whether one more retry may be in flight: the retry budget's share of the requests
        in flight (those waiting for a connection included; at least its minimum), else
        `max_retries`."""
        budget = self.policy.retry_budget
        if budget is not None:
            limit = max(budget.min_concurrency, math.floor(budget.percent / 100 * self.requests))
            return self.retries < limit
        return self._under(self.retries, self.policy.connection_pool.max_retries)

    def request_started(self, address: str) -> None:
        """An upstream request to `address` asked for a stream (it may still wait)."""
        self.requests += 1
        self.active[address] = self.active.get(address, 0) + 1

    def request_ended(self, address: str) -> None:
        self.requests -= 1
        left = self.active.get(address, 0) - 1
        if left > 0:
            self.active[address] = left
        else:
            self.active.pop(address, None)

    def retry_started(self) -> None:
        self.retries += 1
        self.stats["upstream_rq_retry"] += 1

    def retry_ended(self) -> None:
        self.retries -= 1

    # --- outcomes -------------------------------------------------------------------------------

    def report_status(self, address: str, status: int, now: float) -> None:
        if self.outlier is not None:
            self.outlier.report_status(address, status, now)

    def report_local(self, address: str, failure: LocalOrigin, now: float) -> None:
        if self.outlier is not None:
            self.outlier.report_local(address, failure, now)

    def report_connected(self, address: str) -> None:
        if self.outlier is not None:
            self.outlier.report_connected(address)

    # --- the operator's view --------------------------------------------------------------------

    def dump(self, now: float) -> dict[str, Any]:
        policy = self.policy
        lb = policy.load_balancer
        pool = policy.connection_pool
        out: dict[str, Any] = {
            "name": self.name,
            "origin": policy.origin or None,
            "loadBalancer": (
                f"{lb.consistent_hash.table.value}({lb.consistent_hash.source.value}"
                f"{':' + lb.consistent_hash.name if lb.consistent_hash.name else ''})"
                if lb.consistent_hash is not None
                else lb.kind.value
            ),
            "circuitBreakers": {
                "maxConnections": pool.max_connections or None,
                "maxPendingRequests": pool.max_pending_requests or None,
                "maxRequests": pool.max_requests or None,
                "maxRetries": pool.max_retries or None,
                "connections": self.connections,
                "pending": self.pending,
                "requests": self.requests,
                "retries": self.retries,
            },
            "activeRequests": dict(sorted(self.active.items())),
            "stats": dict(self.stats),
        }
        if self.outlier is not None:
            out["outlierDetection"] = self.outlier.dump(now)
        return out
