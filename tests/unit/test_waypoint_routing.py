"""Where agents and waypoints send traffic when waypoints are involved, without sockets.

Agents (ztunnel's outbound decision, its tests as data): a service VIP with a waypoint goes to the
waypoint with the VIP as `:authority`; a pod IP goes to its workload waypoint unless the caller
is that waypoint; a service-addressed call never uses a workload waypoint; a waypoint that
cannot be found fails the connection. Waypoints: routes per service, default routes, subsets,
endpoints avoiding earlier attempts, upstream protocol by the port's application protocol.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from ztunnel_py.agent.proxy.outbound import OutboundError, route
from ztunnel_py.http.filter import Downstream, RequestContext
from ztunnel_py.http.mesh import MeshResolver
from ztunnel_py.http.message import Headers, RequestHead
from ztunnel_py.model import GatewayAddress, NetworkAddress, Service, TunnelProtocol, Workload
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.http import (
    Backend,
    ClusterPolicy,
    ConsistentHash,
    HashSource,
    HttpService,
    LoadBalancer,
    LoadBalancerKind,
    Route,
    Subset,
    TrafficPolicy,
)
from ztunnel_py.model.workload import AppProtocol, NamespacedHostname, WorkloadStatus
from ztunnel_py.state.l7 import L7State
from ztunnel_py.state.mesh import ProxyState

ECHO = "apps/echo.apps.svc.cluster.local"
WP_SVC = "apps/waypoint.apps.svc.cluster.local"
WAYPOINT = GatewayAddress(NamespacedHostname("apps", "waypoint.apps.svc.cluster.local"))


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def pod(name: str, address: str, services: dict[str, dict[int, int]], **kw: object) -> Workload:
    fields: dict[str, object] = {
        "uid": f"Kubernetes//Pod/apps/{name}",
        "name": name,
        "namespace": "apps",
        "addresses": (ip(address),),
        "service_account": name.split("-")[0],
        "tunnel_protocol": TunnelProtocol.HBONE,
        "services": services,
    }
    fields.update(kw)
    return Workload(**fields)  # type: ignore[arg-type]


def service(name: str, vip: str, ports: dict[int, int], **kw: object) -> Service:
    fields: dict[str, object] = {
        "name": name,
        "namespace": "apps",
        "hostname": f"{name}.apps.svc.cluster.local",
        "vips": (NetworkAddress.parse(f"/{vip}"),),
        "ports": ports,
    }
    fields.update(kw)
    return Service(**fields)  # type: ignore[arg-type]


def mesh(*, service_waypoint: bool = True, workload_waypoint: bool = False) -> ProxyState:
    state = ProxyState()
    echo_wp = WAYPOINT if workload_waypoint else None
    state.replace(
        [
            pod(
                "echo-1",
                "10.244.1.10",
                {ECHO: {80: 8080}},
                waypoint=echo_wp,
                canonical_revision="v1",
            ),
            pod(
                "echo-2",
                "10.244.2.10",
                {ECHO: {80: 8080}},
                waypoint=echo_wp,
                canonical_revision="v2",
            ),
            pod("waypoint-0", "10.244.1.200", {WP_SVC: {15008: 15008}}, service_account="waypoint"),
        ],
        [
            service(
                "echo",
                "10.96.0.10",
                {80: 8080, 8082: 8082, 9090: 9090},
                waypoint=WAYPOINT if service_waypoint else None,
                app_protocols={80: AppProtocol.HTTP11, 9090: AppProtocol.GRPC},
            ),
            service("waypoint", "10.96.1.1", {15008: 15008}),
        ],
        [],
    )
    return state


def test_a_service_with_a_waypoint_is_reached_through_it_with_the_vip_as_authority() -> None:
    # ztunnel build_request_destination_svc_waypoint: VIP 127.0.0.3:80 -> waypoint:15008
    state = mesh()
    rt = route(state, ip("10.96.0.10"), 80)
    assert rt.dst_ip == ip("10.244.1.200") and rt.hbone_port == 15008 and rt.hbone
    assert rt.authority == "10.96.0.10:80"
    assert rt.workload is not None and rt.workload.name == "waypoint-0"
    # the identities the TLS check accepts: the waypoint's
    ids = state.upstream_identities(rt.workload, rt.service)
    assert [str(i) for i in ids] == ["spiffe://cluster.local/ns/apps/sa/waypoint"]


def test_without_a_waypoint_a_vip_goes_straight_to_an_endpoint() -> None:
    rt = route(mesh(service_waypoint=False), ip("10.96.0.10"), 80)
    assert rt.via_waypoint is None and rt.dst_port == 8080 and rt.hbone_port == 15008
    assert rt.workload is not None and rt.workload.name.startswith("echo-")


def test_a_pod_ip_goes_to_its_workload_waypoint_unless_the_caller_is_that_waypoint() -> None:
    # build_request_destination_waypoint / build_request_source_waypoint
    state = mesh(service_waypoint=False, workload_waypoint=True)
    rt = route(state, ip("10.244.2.10"), 8080)
    assert rt.dst_ip == ip("10.244.1.200") and rt.authority == "10.244.2.10:8080"
    me = state.workload_by_ip(ip("10.244.1.200"))
    direct = route(state, ip("10.244.2.10"), 8080, source=me)
    assert direct.via_waypoint is None and direct.dst_ip == ip("10.244.2.10")


def test_a_service_addressed_call_never_uses_the_workload_waypoint() -> None:
    state = mesh(service_waypoint=False, workload_waypoint=True)
    rt = route(state, ip("10.96.0.10"), 80)
    assert rt.via_waypoint is None and rt.workload is not None and rt.workload.name != "waypoint-0"


def test_a_missing_waypoint_fails_closed() -> None:
    state = mesh()
    state.apply_delta(removed_workloads=["Kubernetes//Pod/apps/waypoint-0"])
    with pytest.raises(
        OutboundError, match=r"waypoint of echo\.apps\.svc\.cluster\.local not found"
    ):
        route(state, ip("10.96.0.10"), 80)


def test_the_waypoint_address_form_names_a_workload_or_a_vip() -> None:
    state = mesh()
    rng = random.Random(1)
    by_ip = GatewayAddress(NetworkAddress("", ip("10.244.1.200")))
    by_vip = GatewayAddress(NetworkAddress("", ip("10.96.1.1")))
    assert state.waypoint_endpoint(by_ip, rng) is not None
    picked = state.waypoint_endpoint(by_vip, rng)
    assert picked is not None and picked[0].name == "waypoint-0" and picked[1] == 15008


# --- the waypoint's resolver ------------------------------------------------------------------


def ctx(authority: str, *, version: str = "HTTP/1.1", path: str = "/") -> RequestContext:
    head = RequestHead("GET", path, "echo", Headers(), version=version)
    return RequestContext(head, Downstream(None, "10.244.1.11:40000", authority))


async def _never(*_: object) -> object:
    raise AssertionError("not dialled in these tests")


def resolver(state: ProxyState, l7: L7State, seed: int = 7) -> MeshResolver:
    return MeshResolver(state, l7, _never, rng=random.Random(seed))  # type: ignore[arg-type]


def test_without_routes_a_service_gets_a_default_route_to_itself() -> None:
    r = resolver(mesh(), L7State())
    c = ctx("10.96.0.10:80")
    routes = r.routes(c)
    assert c.service == ECHO and c.port == 80
    assert [b.service for b in routes[0].backends] == [ECHO] and routes[0].backends[0].port == 80


def test_configured_routes_are_the_services_own() -> None:
    l7 = L7State()
    mine = Route("api", backends=(Backend(ECHO, 80),))
    l7.apply_services([HttpService(ECHO, (mine,))], [])
    assert list(resolver(mesh(), l7).routes(ctx("10.96.0.10:80"))) == [mine]


def test_a_pod_addressed_request_routes_to_that_pod() -> None:
    state = mesh(service_waypoint=False, workload_waypoint=True)
    r = resolver(state, L7State())
    c = ctx("10.244.2.10:8080")
    (only,) = r.routes(c)
    target = r.target(c, only.backends[0], (), http1=False)
    assert target is not None and target.address == "10.244.2.10:8080"


def test_endpoints_avoid_earlier_attempts_and_subsets_narrow_them() -> None:
    state = mesh()
    l7 = L7State()
    v2 = Subset("v2", (("version", "v2"),), frozenset({"Kubernetes//Pod/apps/echo-2"}))
    l7.apply_services([HttpService(ECHO, (), subsets=((ECHO, (v2,)),))], [])
    r = resolver(state, l7)
    c = ctx("10.96.0.10:80")
    r.routes(c)
    seen = {r.target(c, Backend(ECHO, 80), ("10.244.1.10:8080",), http1=False) for _ in range(20)}
    assert {t.address for t in seen if t} == {"10.244.2.10:8080"}
    only_v2 = {r.target(c, Backend(ECHO, 80, subset="v2"), (), http1=False) for _ in range(20)}
    assert {t.address for t in only_v2 if t} == {"10.244.2.10:8080"}
    assert r.target(c, Backend(ECHO, 80, subset="v3"), (), http1=False) is None


def test_unhealthy_endpoints_are_never_picked() -> None:
    state = mesh()
    sick = state.workload_by_ip(ip("10.244.1.10"))
    assert sick is not None
    state.apply_delta(workloads=[Workload(**{**_fields(sick), "status": WorkloadStatus.UNHEALTHY})])
    r = resolver(state, L7State())
    c = ctx("10.96.0.10:80")
    r.routes(c)
    picks = {r.target(c, Backend(ECHO, 80), (), http1=False) for _ in range(20)}
    assert {t.address for t in picks if t} == {"10.244.2.10:8080"}


def _fields(w: Workload) -> dict[str, object]:
    return {name: getattr(w, name) for name in Workload.__dataclass_fields__}


@pytest.mark.parametrize(
    ("port", "downstream", "http1", "http2"),
    [
        (80, "HTTP/2", False, False),  # declared http: HTTP/1.1 whatever the client spoke
        (9090, "HTTP/1.1", False, True),  # declared grpc: HTTP/2
        (8082, "HTTP/2", False, True),  # undeclared: the client's protocol
        (8082, "HTTP/1.1", False, False),
        (9090, "HTTP/1.1", True, False),  # an upgrade always goes over HTTP/1.1
    ],
)
def test_the_upstream_protocol_follows_the_ports_app_protocol(
    port: int, downstream: str, http1: bool, http2: bool
) -> None:
    r = resolver(mesh(), L7State())
    c = ctx(f"10.96.0.10:{port}", version=downstream)
    r.routes(c)
    target = r.target(c, Backend(ECHO, port), (), http1=http1)
    assert target is not None and target.http2 is http2


def test_unknown_destinations_have_no_routes() -> None:
    assert resolver(mesh(), L7State()).routes(ctx("10.99.0.1:80")) == ()
    assert str(SocketAddr(ip("fd00::1"), 80)) == "[fd00::1]:80"


# --- traffic policies at the waypoint -----------------------------------------------------------


def policy_for(*clusters: ClusterPolicy) -> L7State:
    l7 = L7State()
    v2 = Subset("v2", (("version", "v2"),), frozenset({"Kubernetes//Pod/apps/echo-2"}))
    l7.apply_services([HttpService(ECHO, (), subsets=((ECHO, (v2,)),), clusters=clusters)], [])
    return l7


def test_each_backend_is_a_cluster_with_its_policy() -> None:
    rr = TrafficPolicy(LoadBalancer(LoadBalancerKind.ROUND_ROBIN))
    l7 = policy_for(ClusterPolicy(ECHO, "", 0, rr))
    r = resolver(mesh(), l7)
    c = ctx("10.96.0.10:80")
    r.routes(c)
    picks = [r.target(c, Backend(ECHO, 80), (), http1=False) for _ in range(4)]
    assert [t.address for t in picks if t] == ["10.244.1.10:8080", "10.244.2.10:8080"] * 2
    cluster = picks[0].cluster if picks[0] else None
    assert cluster is not None and cluster.name == "outbound|80||echo.apps.svc.cluster.local"
    assert cluster.policy == rr
    # the subset's cluster is another, with the default policy
    v2 = r.target(c, Backend(ECHO, 80, subset="v2"), (), http1=False)
    assert v2 is not None and v2.cluster is not cluster
    assert v2.cluster is not None and v2.cluster.policy == TrafficPolicy()
    # a new policy is a new cluster; the same policy keeps the cluster (and its state)
    assert r.cluster(c, Backend(ECHO, 80)) is cluster
    l7.apply_services([HttpService(ECHO)], [])
    assert r.cluster(c, Backend(ECHO, 80)) is not cluster
    view = r.dump()["clusters"]
    assert [v["name"] for v in view] == [
        "outbound|80||echo.apps.svc.cluster.local",
        "outbound|80|v2|echo.apps.svc.cluster.local",
    ]


def test_a_cookie_hash_sets_the_cookie_once_and_sticks() -> None:
    sticky = TrafficPolicy(
        LoadBalancer(consistent_hash=ConsistentHash(HashSource.COOKIE, "s", "/", 60.0))
    )
    r = resolver(mesh(), policy_for(ClusterPolicy(ECHO, "", 80, sticky)))
    first = ctx("10.96.0.10:80")
    r.routes(first)
    chosen = r.target(first, Backend(ECHO, 80), (), http1=False)
    again = r.target(first, Backend(ECHO, 80), (), http1=False)  # a retry: no second cookie
    assert chosen is not None and again is not None and chosen.address == again.address
    ((name, cookie),) = first.upstream_response_headers
    assert name == "set-cookie" and cookie.startswith('s="') and "Max-Age=60; Path=/" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    for _ in range(10):
        follow = RequestContext(
            RequestHead("GET", "/", "echo", Headers([("cookie", f"s={value}")])),
            Downstream(None, "10.244.1.99:1234", "10.96.0.10:80"),
        )
        r.routes(follow)
        target = r.target(follow, Backend(ECHO, 80), (), http1=False)
        assert target is not None and target.address == chosen.address
        assert follow.upstream_response_headers == []


def test_passthrough_goes_to_the_address_the_client_dialled() -> None:
    passthrough = TrafficPolicy(LoadBalancer(LoadBalancerKind.PASSTHROUGH))
    r = resolver(mesh(), policy_for(ClusterPolicy(ECHO, "", 0, passthrough)))
    c = ctx("10.96.0.10:80")
    r.routes(c)
    # a service address is not an endpoint
    assert r.target(c, Backend(ECHO, 80), (), http1=False) is None
    pod_call = ctx("10.244.2.10:8080")
    pod_call.service = ECHO
    target = r.target(pod_call, Backend(ECHO, 80), (), http1=False)
    assert target is not None and target.address == "10.244.2.10:8080"


def test_remembered_endpoints_follow_state_changes() -> None:
    # the resolver remembers a backend's endpoints between requests: a change of the workload
    # state must show at the next request, in both directions
    state = mesh()
    r = resolver(state, L7State())
    c = ctx("10.96.0.10:80")
    r.routes(c)
    both = {r.target(c, Backend(ECHO, 80), (), http1=False) for _ in range(40)}
    assert {t.address for t in both if t} == {"10.244.1.10:8080", "10.244.2.10:8080"}
    sick = state.workload_by_ip(ip("10.244.1.10"))
    assert sick is not None
    state.apply_delta(workloads=[Workload(**{**_fields(sick), "status": WorkloadStatus.UNHEALTHY})])
    picks = {r.target(c, Backend(ECHO, 80), (), http1=False) for _ in range(20)}
    assert {t.address for t in picks if t} == {"10.244.2.10:8080"}
    state.apply_delta(workloads=[sick])
    again = {r.target(c, Backend(ECHO, 80), (), http1=False) for _ in range(40)}
    assert {t.address for t in again if t} == {"10.244.1.10:8080", "10.244.2.10:8080"}
    # the service the authority names is looked up again once it is gone
    echo = state.service_by_vip(ip("10.96.0.10"))
    assert echo is not None
    state.apply_delta(removed_services=[echo.key])
    gone = ctx("10.96.0.10:80")
    assert r.routes(gone) == ()
