"""Outlier detection and the cluster's circuit breakers, sans-IO on a fake clock: when an
endpoint is ejected and when it returns (at the interval sweeps, for longer after each
ejection, forgiven step by step), the ejection limit and the panic threshold, local-origin
failures, and the counters the connection pool limits are checked against."""

from __future__ import annotations

import random

from ztunnel_py.http.balancer import Endpoint
from ztunnel_py.http.cluster import Cluster
from ztunnel_py.http.outlier import MAX_EJECTION_TIME, LocalOrigin, OutlierDetector
from ztunnel_py.model.http import (
    ConnectionPool,
    LoadBalancer,
    LoadBalancerKind,
    OutlierDetection,
    RetryBudget,
    TrafficPolicy,
)

A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


def detector(**config: object) -> OutlierDetector:
    settings = {"interval": 10.0, "base_ejection_time": 30.0, "max_ejection_percent": 100}
    settings.update(config)
    d = OutlierDetector(OutlierDetection(**settings), now=0.0)  # type: ignore[arg-type]
    d.sync([A, B, C])
    return d


def test_consecutive_5xx_eject_and_a_success_resets_the_count() -> None:
    d = detector()
    for _ in range(4):
        d.report_status(A, 500, 1.0)
    d.report_status(A, 200, 1.0)
    for _ in range(4):
        d.report_status(A, 503, 1.0)
    assert not d.ejected(A, 1.0)
    d.report_status(A, 500, 2.0)
    assert d.ejected(A, 2.0) and not d.ejected(B, 2.0)


def test_gateway_errors_have_their_own_count() -> None:
    d = detector(consecutive_5xx=0, consecutive_gateway_errors=3)
    d.report_status(A, 502, 1.0)
    d.report_status(A, 504, 1.0)
    d.report_status(A, 500, 1.0)  # a 5xx that is not a gateway error starts over
    d.report_status(A, 503, 1.0)
    d.report_status(A, 503, 1.0)
    assert not d.ejected(A, 1.0)
    d.report_status(A, 503, 1.0)
    assert d.ejected(A, 1.0)
    # 5xx counting is off (0): any number of 500s ejects nobody
    for _ in range(20):
        d.report_status(B, 500, 1.0)
    assert not d.ejected(B, 1.0)


def test_local_origin_failures_count_as_gateway_errors_unless_split() -> None:
    d = detector(consecutive_5xx=0, consecutive_gateway_errors=2)
    d.report_local(A, LocalOrigin.CONNECT_FAILED, 1.0)
    d.report_local(A, LocalOrigin.TIMEOUT, 1.0)
    assert d.ejected(A, 1.0)
    split = detector(split_local_origin=True, consecutive_local_origin=2, consecutive_5xx=2)
    split.report_local(A, LocalOrigin.RESET, 1.0)
    split.report_connected(A)  # a connection made starts the local count over
    split.report_local(A, LocalOrigin.RESET, 1.0)
    split.report_status(A, 500, 1.0)  # counted apart from local origin failures
    assert not split.ejected(A, 1.0)
    split.report_local(A, LocalOrigin.CONNECT_FAILED, 1.0)
    assert split.ejected(A, 1.0)


def test_an_ejection_ends_at_the_first_sweep_after_its_time() -> None:
    d = detector()
    for _ in range(5):
        d.report_status(A, 500, 3.0)
    # sweeps at 10, 20, 30, 40: 3 + 30 = 33 is over at the sweep of 40
    assert d.ejected(A, 39.9)
    assert not d.ejected(A, 40.0)
    # back with its counters reset: four more failures do not eject it again
    for _ in range(4):
        d.report_status(A, 500, 41.0)
    assert not d.ejected(A, 41.0)


def test_repeated_ejections_last_longer_and_are_forgiven_while_healthy() -> None:
    d = detector()

    def eject(at: float) -> None:
        for _ in range(5):
            d.report_status(A, 500, at)
        assert d.ejected(A, at)

    eject(1.0)  # 30 s
    assert not d.ejected(A, 40.0)
    eject(41.0)  # the second in a row: 60 s, over at the sweep of 110
    assert d.ejected(A, 109.0) and not d.ejected(A, 110.0)
    eject(111.0)  # the third: 90 s
    assert d.ejected(A, 200.0) and not d.ejected(A, 210.0)
    assert d.dump(210.0)["endpoints"][A]["backoff"] == 3
    # healthy for a while: one step forgiven per sweep once base_ejection_time has passed
    assert d.dump(230.0)["endpoints"][A]["backoff"] == 3
    assert d.dump(240.0)["endpoints"][A]["backoff"] == 2
    assert d.dump(250.0)["endpoints"][A]["backoff"] == 1
    assert d.dump(260.0)["endpoints"][A]["backoff"] == 0
    eject(261.0)  # back to 30 s
    assert not d.ejected(A, 300.0)


def test_ejection_time_is_capped() -> None:
    d = detector(base_ejection_time=100.0)
    t = 1.0
    for _ in range(6):
        for _ in range(5):
            d.report_status(A, 500, t)
        assert d.ejected(A, t)
        # find when it returns
        while d.ejected(A, t):
            t += 10.0
        t += 0.5
    assert t - 1.0 < 6 * (MAX_EJECTION_TIME + 20)
    assert d.dump(t)["endpoints"][A]["backoff"] <= MAX_EJECTION_TIME / 100 + 1


def test_the_ejected_share_is_bounded() -> None:
    d = detector(max_ejection_percent=50)
    d.sync([A, B])
    for address in (A, B):
        for _ in range(5):
            d.report_status(address, 500, 1.0)
    assert d.ejected(A, 1.0) and not d.ejected(B, 1.0)
    assert d.dump(1.0)["ejectionsOverflowed"] == 1
    # Envoy's default 10 %: with two endpoints, none can be ejected
    ten = detector(max_ejection_percent=10)
    ten.sync([A, B])
    for _ in range(5):
        ten.report_status(A, 500, 1.0)
    assert not ten.ejected(A, 1.0)


def test_departed_endpoints_are_forgotten() -> None:
    d = detector()
    for _ in range(5):
        d.report_status(A, 500, 1.0)
    d.sync([B, C])
    d.sync([A, B, C])
    assert not d.ejected(A, 1.0)


def test_a_long_quiet_spell_is_caught_up_at_once() -> None:
    d = detector(interval=0.001)
    for _ in range(5):
        d.report_status(A, 500, 0.0)
    assert not d.ejected(A, 10_000.0)


# --- the cluster ---------------------------------------------------------------------------------


def cluster(**policy: object) -> Cluster:
    policy_ = TrafficPolicy(**policy)  # type: ignore[arg-type]
    return Cluster("outbound|80||echo", policy_, rng=random.Random(1), clock=lambda: 0.0)


ENDPOINTS = [Endpoint(A), Endpoint(B), Endpoint(C)]


def test_ejected_endpoints_get_no_traffic_until_they_return() -> None:
    c = cluster(
        outlier_detection=OutlierDetection(
            2, interval=1.0, base_ejection_time=5.0, max_ejection_percent=100
        ),
        load_balancer=LoadBalancer(LoadBalancerKind.ROUND_ROBIN),
    )
    assert c.choose(ENDPOINTS, (), None, 0.0) is not None
    c.report_status(A, 500, 0.5)
    c.report_status(A, 500, 0.5)
    picks = {c.choose(ENDPOINTS, (), None, t / 10).address for t in range(5, 50)}  # type: ignore[union-attr]
    assert picks == {B, C}
    assert A in {c.choose(ENDPOINTS, (), None, 6.0).address for _ in range(3)}  # type: ignore[union-attr]
    # every endpoint ejected: no healthy upstream
    for address in (A, B, C):
        c.report_status(address, 503, 7.0)
        c.report_status(address, 503, 7.0)
    assert c.choose(ENDPOINTS, (), None, 7.0) is None


def test_below_the_panic_threshold_ejections_are_ignored() -> None:
    c = cluster(
        outlier_detection=OutlierDetection(1, max_ejection_percent=100, min_health_percent=50)
    )
    c.choose(ENDPOINTS, (), None, 0.0)
    c.report_status(A, 500, 0.0)
    assert {c.choose(ENDPOINTS, (), None, 0.0).address for _ in range(40)} == {B, C}  # type: ignore[union-attr]
    c.report_status(B, 500, 0.0)  # one of three healthy: under 50 %, all are used
    assert {c.choose(ENDPOINTS, (), None, 0.0).address for _ in range(60)} == {A, B, C}  # type: ignore[union-attr]


def test_a_retry_avoids_the_endpoints_it_tried() -> None:
    c = cluster()
    for _ in range(30):
        assert c.choose(ENDPOINTS, (A, B), None, 0.0).address == C  # type: ignore[union-attr]
    # every one tried: any
    assert c.choose(ENDPOINTS, (A, B, C), None, 0.0) is not None


def test_circuit_breaker_counters_against_the_limits() -> None:
    c = cluster(
        connection_pool=ConnectionPool(
            max_connections=1, max_pending_requests=1, max_requests=2, max_retries=1
        )
    )
    assert c.can_connect()
    c.connections = 1
    assert not c.can_connect()
    assert c.can_queue()
    c.pending = 1
    assert not c.can_queue()
    c.request_started(A)
    c.request_started(A)
    assert not c.can_request()
    assert c.active == {A: 2}
    c.request_ended(A)
    c.request_ended(A)
    assert c.can_request() and c.active == {}
    assert c.can_retry()
    c.retry_started()
    assert not c.can_retry()
    c.retry_ended()
    assert c.stats["upstream_rq_retry"] == 1
    unlimited = cluster()
    unlimited.connections = unlimited.pending = unlimited.requests = unlimited.retries = 10**6
    assert unlimited.can_connect() and unlimited.can_queue() and unlimited.can_request()
    assert unlimited.can_retry()


def test_a_retry_budget_is_a_share_of_the_requests_in_flight() -> None:
    c = cluster(retry_budget=RetryBudget(25.0, 2))
    c.retries = 1
    assert c.can_retry()  # the minimum: 2
    c.retries = 2
    assert not c.can_retry()
    for _ in range(12):
        c.request_started(A)
    assert c.can_retry()  # 25 % of 12 = 3
    c.retries = 3
    assert not c.can_retry()


def test_the_dump_shows_policy_counters_and_ejections() -> None:
    c = cluster(
        outlier_detection=OutlierDetection(1, max_ejection_percent=100),
        connection_pool=ConnectionPool(max_connections=5),
        origin="DestinationRule apps/echo",
    )
    c.choose(ENDPOINTS, (), None, 0.0)
    c.report_status(B, 502, 1.0)
    view = c.dump(2.0)
    assert view["name"] == "outbound|80||echo"
    assert view["loadBalancer"] == "LEAST_REQUEST"
    assert view["origin"] == "DestinationRule apps/echo"
    assert view["circuitBreakers"]["maxConnections"] == 5
    endpoint = view["outlierDetection"]["endpoints"][B]
    assert endpoint["ejected"] and endpoint["secondsLeft"] == 29.0
    assert endpoint["lastEjection"] == "consecutive 5xx"
