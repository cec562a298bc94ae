"""Traffic policy in the HTTP engine on real loopback sockets: circuit breakers (requests over
the connection pool limits answered `503` flag `UO` with `x-envoy-overloaded`, pending requests
served once a connection frees up, connections closed after `maxRequestsPerConnection`), the
retry budget, outlier detection keeping traffic off a failing endpoint, and mirroring (the
client sees only the main upstream; a mirror that never answers costs it nothing and its
copies are bounded)."""

from __future__ import annotations

import random
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import pytest
import trio

from tests.integration.http_support import H1Upstream, listen_tcp, run, run_proxy
from ztunnel_py.http.balancer import Endpoint
from ztunnel_py.http.cluster import Cluster
from ztunnel_py.http.filter import RequestContext
from ztunnel_py.http.mirror import MAX_IN_FLIGHT, Mirrors
from ztunnel_py.http.upstream import UpstreamTarget
from ztunnel_py.model.http import (
    Backend,
    ConnectionPool,
    LoadBalancer,
    LoadBalancerKind,
    Mirror,
    OutlierDetection,
    RetryPolicy,
    Route,
    TrafficPolicy,
)

pytestmark = pytest.mark.timeout(60)

SVC = "test/svc"
SHADOW = "test/shadow"


@dataclass
class ClusterResolver:
    """Backends as clusters with a traffic policy, over HTTP/1.1 endpoints on loopback."""

    table: Sequence[Route]
    endpoints: dict[str, list[str]]
    policies: dict[str, TrafficPolicy] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)

    def routes(self, ctx: RequestContext) -> Sequence[Route]:
        ctx.port = 80
        ctx.service = SVC
        return self.table

    def cluster(self, service: str) -> Cluster:
        if service not in self.clusters:
            self.clusters[service] = Cluster(
                service,
                self.policies.get(service, TrafficPolicy()),
                rng=random.Random(1),
                clock=trio.current_time,
            )
        return self.clusters[service]

    def target(
        self, ctx: RequestContext, backend: Backend, exclude: Collection[str], *, http1: bool
    ) -> UpstreamTarget | None:
        cluster = self.cluster(backend.service)
        endpoints = [Endpoint(a) for a in self.endpoints.get(backend.service, [])]
        chosen = cluster.choose(endpoints, exclude, None, trio.current_time())
        if chosen is None:
            return None
        host, _, port = chosen.address.rpartition(":")

        async def connect() -> trio.SocketStream:
            return await trio.open_tcp_stream(host, int(port))

        return UpstreamTarget(
            (cluster.name, chosen.address), chosen.address, False, connect, cluster=cluster
        )


def pool(**limits: int) -> TrafficPolicy:
    return TrafficPolicy(connection_pool=ConnectionPool(**limits))


def one_service(up: H1Upstream, policy: TrafficPolicy) -> ClusterResolver:
    """Every request to `up`, its cluster under `policy`."""
    return ClusterResolver(
        [Route("r", backends=(Backend(SVC, 80),))], {SVC: [up.address]}, {SVC: policy}
    )


async def curl_status(url: str, *headers: str) -> tuple[int, str]:
    """The status and the response headers (lower-case) of one request."""
    extra = [arg for h in headers for arg in ("-H", h)]
    done = await run(
        "curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-D", "-", *extra, url, limit=30
    )
    assert done.returncode == 0, done.stderr.decode()  # the whole response came, body included
    head = done.stdout.decode().lower()
    return int(head.split()[1]), head


async def concurrently(count: int, url: str) -> list[tuple[int, str]]:
    results: list[tuple[int, str]] = []

    async def one() -> None:
        results.append(await curl_status(url))

    async with trio.open_nursery() as n:
        for _ in range(count):
            n.start_soon(one)
    return results


async def test_over_the_connection_and_pending_limits_requests_get_503_uo(
    nursery: trio.Nursery,
) -> None:
    up = await H1Upstream().serve(nursery)
    resolver = one_service(up, pool(max_connections=1, max_pending_requests=1))
    async with run_proxy(resolver) as proxy:
        results = await concurrently(10, f"{proxy.url}/delay/1500")
        statuses = sorted(s for s, _ in results)
        # one in flight on the one connection, one pending for it; the rest overflow
        assert statuses.count(200) >= 2 and statuses.count(503) >= 5, statuses
        for status, head in results:
            if status == 503:
                assert "x-envoy-overloaded: true" in head
        logs = await proxy.log.wait_for(10)
        overflowed = [c for c in logs if c.response is not None and c.response.status == 503]
        assert all(c.flags_text == "UO" for c in overflowed)
        assert {c.details for c in overflowed} == {
            "upstream_reset_before_response_started{overflow}"
        }
        assert up.connections == 1
        cluster = resolver.clusters[SVC]
        assert cluster.stats["upstream_rq_pending_overflow"] == len(overflowed)
        assert (cluster.connections, cluster.pending, cluster.requests) == (1, 0, 0)
        # the limits are not a throttle for requests that come one at a time
        for _ in range(3):
            assert (await curl_status(f"{proxy.url}/echo"))[0] == 200


async def test_requests_in_flight_over_max_requests_overflow(nursery: trio.Nursery) -> None:
    up = await H1Upstream().serve(nursery)
    resolver = one_service(up, pool(max_requests=2))
    async with run_proxy(resolver) as proxy:
        results = await concurrently(6, f"{proxy.url}/delay/2000")
        assert sorted(s for s, _ in results) == [200, 200, 503, 503, 503, 503]
        assert resolver.clusters[SVC].stats["upstream_rq_overflow"] == 4


async def test_a_connection_serves_at_most_max_requests_per_connection(
    nursery: trio.Nursery,
) -> None:
    up = await H1Upstream().serve(nursery)
    resolver = one_service(up, pool(max_requests_per_connection=2))
    async with run_proxy(resolver) as proxy:
        for _ in range(5):
            assert (await curl_status(f"{proxy.url}/echo"))[0] == 200
        assert up.connections == 3
        with trio.fail_after(5):
            while up.open > 1:
                await trio.sleep(0.02)


async def test_retries_stop_at_the_clusters_retry_limit(nursery: trio.Nursery) -> None:
    up = await H1Upstream().serve(nursery)
    retrying = Route(
        "r",
        backends=(Backend(SVC, 80),),
        retries=RetryPolicy(3, retry_on=("5xx",)),
    )
    resolver = ClusterResolver([retrying], {SVC: [up.address]}, {SVC: pool(max_retries=1)})
    async with run_proxy(resolver, rand=lambda: 0.0) as proxy:
        up.fail_next = 100
        cluster = resolver.cluster(SVC)
        cluster.retries = 1  # another request's retry is in flight
        status, _ = await curl_status(f"{proxy.url}/flaky")
        assert status == 503 and len(up.requests) == 1
        (ctx,) = await proxy.log.wait_for(1)
        assert ctx.flags_text == "UO" and ctx.attempts == 1
        cluster.retries = 0
        up.fail_next = 2
        status, _ = await curl_status(f"{proxy.url}/flaky")
        assert status == 200 and len(up.requests) == 4
        assert cluster.retries == 0 and cluster.stats["upstream_rq_retry"] == 2


async def test_outlier_detection_keeps_traffic_off_a_failing_endpoint(
    nursery: trio.Nursery,
) -> None:
    bad, good = await H1Upstream().serve(nursery), await H1Upstream().serve(nursery)
    bad.fail_next = 10**6
    once = Route("r", backends=(Backend(SVC, 80),), retries=RetryPolicy(0))
    policy = TrafficPolicy(
        LoadBalancer(LoadBalancerKind.ROUND_ROBIN),
        # ejections long enough for a dozen curl runs on a loaded machine: the first (2 s)
        # outlasts the first loop, the second (4 s) the second loop
        outlier_detection=OutlierDetection(
            3, interval=0.2, base_ejection_time=2.0, max_ejection_percent=50
        ),
    )
    resolver = ClusterResolver([once], {SVC: [bad.address, good.address]}, {SVC: policy})
    async with run_proxy(resolver) as proxy:
        statuses = [(await curl_status(f"{proxy.url}/flaky"))[0] for _ in range(12)]
        ejected = trio.current_time()
        # round robin: the bad endpoint fails 3 times, then is ejected
        assert statuses.count(503) == 3 and len(bad.requests) == 3
        assert statuses[6:] == [200] * 6
        # it returns after its ejection (and a sweep), fails again, is ejected for longer
        await trio.sleep_until(ejected + 2.5)
        for _ in range(8):
            await curl_status(f"{proxy.url}/flaky")
        assert len(bad.requests) == 6
        view = resolver.clusters[SVC].dump(trio.current_time())
        endpoint = view["outlierDetection"]["endpoints"][bad.address]
        assert endpoint["ejected"] and endpoint["ejections"] == 2 and endpoint["backoff"] == 2


async def test_a_mirror_never_delays_the_client_and_its_copies_are_bounded(
    nursery: trio.Nursery,
) -> None:
    main = await H1Upstream().serve(nursery)
    accepted: list[trio.SocketStream] = []

    async def black_hole(stream: trio.SocketStream) -> None:
        # reads requests and never answers
        accepted.append(stream)
        async for _ in stream:
            pass

    hole = await listen_tcp(nursery, black_hole)
    route = Route("r", backends=(Backend(SVC, 80),), mirrors=(Mirror(Backend(SHADOW, 80), 100.0),))
    resolver = ClusterResolver([route], {SVC: [main.address], SHADOW: [f"127.0.0.1:{hole}"]})
    async with run_proxy(resolver) as proxy:
        proxy.proxy.mirrors = mirrors = Mirrors(nursery, proxy.pool, resolver)
        started = trio.current_time()
        status, head = await curl_status(f"{proxy.url}/echo", "host: echo.apps:80")
        assert status == 200 and "x-envoy" not in head
        assert trio.current_time() - started < 1.0
        with trio.fail_after(5):
            while not accepted:
                await trio.sleep(0.01)
        assert mirrors.in_flight == 1
        for _ in range(MAX_IN_FLIGHT + 5):
            # keep-alive client: one connection, many requests
            await curl_status(f"{proxy.url}/echo")
        assert mirrors.in_flight == MAX_IN_FLIGHT and mirrors.dropped >= 5
        assert len(main.requests) == MAX_IN_FLIGHT + 6
        # the client's requests are the ones logged, not the copies
        assert len(await proxy.log.wait_for(MAX_IN_FLIGHT + 6)) == MAX_IN_FLIGHT + 6


async def test_a_mirror_gets_the_request_with_a_shadow_authority_and_body(
    nursery: trio.Nursery,
) -> None:
    main, shadow = await H1Upstream().serve(nursery), await H1Upstream().serve(nursery)
    route = Route(
        "r",
        backends=(Backend(SVC, 80),),
        mirrors=(Mirror(Backend(SHADOW, 80), 100.0), Mirror(Backend(SHADOW, 80), 0.0)),
    )
    resolver = ClusterResolver([route], {SVC: [main.address], SHADOW: [shadow.address]})
    async with run_proxy(resolver) as proxy:
        proxy.proxy.mirrors = Mirrors(nursery, proxy.pool, resolver)
        done = await run(
            "curl",
            "-sS",
            "-H",
            "host: echo.apps:80",
            "--data-binary",
            "hello mirror",
            f"{proxy.url}/echo",
            limit=30,
        )
        assert b'"body_len": 12' in done.stdout
        with trio.fail_after(5):
            while not shadow.requests:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        (method, path, headers) = shadow.requests[0]
        assert (method, path, headers["host"]) == ("POST", "/echo", "echo.apps-shadow:80")
        assert len(shadow.requests) == 1  # the 0 % mirror sent nothing
        assert main.requests[0][2]["host"] == "echo.apps:80"


@pytest.mark.parametrize(
    ("retry_on", "codes", "path", "tries"),
    [
        (("5xx",), (), "/status/500", 3),
        (("5xx",), (), "/status/404", 1),
        (("5xx",), (), "/reset-before", 3),
        (("gateway-error",), (), "/status/502", 3),
        (("gateway-error",), (), "/status/504", 3),
        (("gateway-error",), (), "/status/500", 1),
        (("reset",), (), "/reset-before", 3),
        (("reset",), (), "/status/503", 1),
        (("retriable-4xx",), (), "/status/409", 3),
        (("retriable-4xx",), (), "/status/404", 1),
        (("retriable-status-codes",), (418,), "/status/418", 3),
        (("retriable-status-codes",), (418,), "/status/500", 1),
        (("connect-failure", "refused-stream"), (), "/status/503", 1),
    ],
)
async def test_each_retry_condition(
    nursery: trio.Nursery, retry_on: tuple[str, ...], codes: tuple[int, ...], path: str, tries: int
) -> None:
    up = await H1Upstream().serve(nursery)
    route = Route("r", backends=(Backend(SVC, 80),), retries=RetryPolicy(2, None, retry_on, codes))
    async with run_proxy(ClusterResolver([route], {SVC: [up.address]}), rand=lambda: 0.0) as proxy:
        await curl_status(f"{proxy.url}{path}")
        (ctx,) = await proxy.log.wait_for(1)
        assert (ctx.attempts, len(up.requests)) == (tries, tries)
        assert ("URX" in ctx.response_flags) is (tries > 1)


@pytest.mark.parametrize(
    ("retry_on", "tries"), [(("connect-failure",), 3), (("reset",), 3), (("retriable-4xx",), 1)]
)
async def test_connect_failures_are_retried_under_connect_failure_and_reset(
    nursery: trio.Nursery, retry_on: tuple[str, ...], tries: int
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    route = Route("r", backends=(Backend(SVC, 80),), retries=RetryPolicy(2, None, retry_on))
    async with run_proxy(ClusterResolver([route], {SVC: [address]}), rand=lambda: 0.0) as proxy:
        status, _ = await curl_status(f"{proxy.url}/")
        (ctx,) = await proxy.log.wait_for(1)
        assert status == 503 and ctx.attempts == tries and "UF" in ctx.response_flags
