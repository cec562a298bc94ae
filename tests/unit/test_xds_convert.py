"""Model <-> workload API conversion: round trips, versions, and what the agent rejects."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.model import (
    Action,
    Authorization,
    GatewayAddress,
    Match,
    NamespacedHostname,
    NetworkAddress,
    PolicyScope,
    Service,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.identity import Identity
from ztunnel_py.model.workload import (
    HealthPolicy,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    NetworkCidr,
    NetworkMode,
)
from ztunnel_py.policy.rbac import Connection, evaluate
from ztunnel_py.proto import authorization_pb2, discovery_pb2, workload_pb2
from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, Request
from ztunnel_py.xds.convert import (
    ConversionError,
    NodeInfo,
    XdsDecodeError,
    decode_request,
    decode_response,
    encode_resource,
)

WORKLOAD = Workload(
    uid="Kubernetes//Pod/demo/a",
    name="a",
    namespace="demo",
    addresses=(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00::1")),
    service_account="app",
    trust_domain="td.example",
    node="node-1",
    network="n1",
    tunnel_protocol=TunnelProtocol.HBONE,
    canonical_name="app",
    canonical_revision="v1",
    workload_name="app-v1",
    workload_type="job",
    waypoint=GatewayAddress(NetworkAddress("n1", ipaddress.ip_address("10.0.0.9")), 15009),
    services={"demo/app.demo.svc.cluster.local": {80: 8080, 81: 0}},
    authorization_policies=("demo/p1", "demo/p2"),
    status=WorkloadStatus.UNHEALTHY,
    cluster_id="c1",
    capacity=5,
)
SERVICE = Service(
    name="app",
    namespace="demo",
    hostname="app.demo.svc.cluster.local",
    vips=(
        NetworkAddress("", ipaddress.ip_address("10.96.0.1")),
        NetworkAddress("n1", ipaddress.ip_address("fd00:96::1")),
    ),
    ports={80: 8080, 443: 0},
    subject_alt_names=("spiffe://td.example/ns/demo/sa/other",),
    waypoint=GatewayAddress(NamespacedHostname("demo", "wp.demo.svc.cluster.local")),
)
POLICY = Authorization(
    name="p1",
    namespace="demo",
    scope=PolicyScope.GLOBAL,
    action=Action.ALLOW,
    rules=(
        (
            (
                Match(
                    namespaces=(StringMatch(StringMatchKind.EXACT, "demo"),),
                    not_namespaces=(StringMatch(StringMatchKind.PREFIX, "kube"),),
                    service_accounts=(ServiceAccountMatch("demo", "app"),),
                    not_service_accounts=(ServiceAccountMatch("demo", "bad"),),
                    principals=(StringMatch(StringMatchKind.SUFFIX, "/sa/app"),),
                    not_principals=(StringMatch(StringMatchKind.PRESENCE),),
                    source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                    not_source_ips=(ipaddress.ip_network("10.1.2.3/32"),),
                    destination_ips=(ipaddress.ip_network("fd00::/16"),),
                    not_destination_ips=(ipaddress.ip_network("0.0.0.0/0"),),
                    destination_ports=(80,),
                    not_destination_ports=(0, 65535),
                ),
                Match(),
            ),
            ((Match(destination_ports=(443,)),)),
        ),
        (),
    ),
    dry_run=True,
)


def response(type_url: str, *resources: tuple[str, bytes], removed: tuple[str, ...] = ()) -> bytes:
    pb = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, nonce="n", removed_resources=list(removed)
    )
    for name, payload in resources:
        r = pb.resources.add(name=name, version="v")
        r.resource.type_url = type_url
        r.resource.value = payload
    return pb.SerializeToString()


def roundtrip(type_url: str, name: str, obj: Workload | Service | Authorization) -> object:
    encoded = encode_resource(type_url, name, obj)
    decoded = decode_response(response(type_url, (name, encoded.resource.resource.value)))
    assert decoded.rejected == {}
    found: list[object] = [*decoded.workloads, *decoded.services, *decoded.policies]
    assert len(found) == 1
    return found[0]


def test_round_trips_keep_everything_the_model_carries() -> None:
    assert roundtrip(ADDRESS_TYPE, WORKLOAD.uid, WORKLOAD) == WORKLOAD
    assert roundtrip(ADDRESS_TYPE, SERVICE.key, SERVICE) == SERVICE
    assert roundtrip(AUTHORIZATION_TYPE, POLICY.key, POLICY) == POLICY


def test_versions_follow_content_only() -> None:
    a = encode_resource(ADDRESS_TYPE, WORKLOAD.uid, WORKLOAD)
    again = encode_resource(ADDRESS_TYPE, WORKLOAD.uid, WORKLOAD)
    moved = dataclasses.replace(WORKLOAD, node="node-2")
    assert a.version == again.version
    assert encode_resource(ADDRESS_TYPE, WORKLOAD.uid, moved).version != a.version


def test_encoding_refuses_what_the_api_cannot_carry() -> None:
    odd = dataclasses.replace(WORKLOAD, workload_type="statefulset")
    with pytest.raises(ConversionError, match="workload type 'statefulset'"):
        encode_resource(ADDRESS_TYPE, odd.uid, odd)
    with pytest.raises(ConversionError, match="not a"):
        encode_resource(AUTHORIZATION_TYPE, WORKLOAD.uid, WORKLOAD)
    huge = dataclasses.replace(WORKLOAD, capacity=2**40)
    with pytest.raises(ConversionError, match="cannot encode"):
        encode_resource(ADDRESS_TYPE, huge.uid, huge)


def address(**fields: Any) -> bytes:
    base: dict[str, Any] = {"uid": "u", "namespace": "ns", "addresses": [bytes(4)]}
    base.update(fields)
    return workload_pb2.Address(workload=workload_pb2.Workload(**base)).SerializeToString()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (address(uid=""), "workload has no uid"),
        (address(namespace=""), "workload has no namespace"),
        (address(tunnel_protocol=2), "LEGACY_ISTIO_MTLS is not supported"),
        (address(tunnel_protocol=7), "unsupported tunnel protocol 7"),
        (address(uid="other"), "resource name does not match its key 'other'"),
        (
            address(waypoint=workload_pb2.GatewayAddress(hbone_mtls_port=15008)),
            "waypoint has neither a hostname nor an address",
        ),
        (
            workload_pb2.Address().SerializeToString(),
            "address has neither a workload nor a service",
        ),
        (b"\xff\xff\xff", "cannot decode the payload"),
    ],
)
def test_rejected_addresses_name_the_reason(payload: bytes, reason: str) -> None:
    decoded = decode_response(response(ADDRESS_TYPE, ("u", payload)))
    assert decoded.workloads == [] and decoded.accepted == {}
    assert reason in decoded.rejected["u"]


def decoded_workload(payload: bytes) -> Workload:
    decoded = decode_response(response(ADDRESS_TYPE, ("u", payload)))
    assert decoded.rejected == {} and len(decoded.workloads) == 1
    return decoded.workloads[0]


def test_unreadable_workload_parts_are_dropped_alone(caplog: pytest.LogCaptureFixture) -> None:
    """ztunnel applies what it can read of a workload: an address of the wrong length, a
    service key without a namespace, a port out of range are left out, and an enum value this
    version does not know (a newer istiod's) reads as the field's default."""
    caplog.set_level("WARNING", logger="ztunnel_py.xds.convert")
    good = bytes([10, 0, 0, 1])
    w = decoded_workload(
        address(
            addresses=[b"\x0a\x00\x00", good],
            workload_type=9,
            status=4,
            network_mode=7,
            services={
                "nohost": workload_pb2.PortList(),
                "a/b": workload_pb2.PortList(
                    ports=[
                        workload_pb2.Port(service_port=70000, target_port=80),
                        workload_pb2.Port(service_port=81, target_port=8081),
                    ]
                ),
            },
        )
    )
    assert w.addresses == (ipaddress.ip_address("10.0.0.1"),)
    assert w.workload_type == "deployment"
    assert w.status is WorkloadStatus.HEALTHY
    assert w.network_mode is NetworkMode.STANDARD
    assert w.services == {"a/b": {81: 8081}}
    warned = caplog.text
    assert "u: address 0 has 3 bytes" in warned
    assert "service key 'nohost' is not 'namespace/hostname': dropped" in warned
    assert "service a/b service port 70000 is not a port" in warned


def test_service_rejections_and_what_is_accepted() -> None:
    def svc(**fields: Any) -> bytes:
        base: dict[str, Any] = {"namespace": "ns", "hostname": "h"}
        base.update(fields)
        return workload_pb2.Address(service=workload_pb2.Service(**base)).SerializeToString()

    decoded = decode_response(response(ADDRESS_TYPE, ("ns/h", svc(hostname=""))))
    assert "service needs a namespace and a hostname" in decoded.rejected["ns/h"]

    def accepted(payload: bytes) -> Service:
        decoded = decode_response(response(ADDRESS_TYPE, ("ns/h", payload)))
        assert decoded.rejected == {}, decoded.rejected
        return decoded.services[0]

    # kube-dns: port 53 over UDP and over TCP is one port here, as in ztunnel's port map
    dns = accepted(
        svc(
            ports=[
                workload_pb2.Port(service_port=53, target_port=53),
                workload_pb2.Port(service_port=53, target_port=53),
                workload_pb2.Port(service_port=9153, target_port=9153),
            ]
        )
    )
    assert dns.ports == {53: 53, 9153: 9153}
    assert accepted(svc(ports=[workload_pb2.Port(service_port=0)])).ports == {}
    ranged = accepted(
        svc(
            addresses=[
                workload_pb2.NetworkAddress(address=bytes([10, 20, 0, 0]), length=16),
                workload_pb2.NetworkAddress(address=bytes([10, 20, 9, 9]), length=32),
                workload_pb2.NetworkAddress(address=bytes(4), length=40),
                workload_pb2.NetworkAddress(address=b"\x01"),
            ],
            ip_families=9,
            load_balancing=workload_pb2.LoadBalancing(
                mode=9, routing_preference=[1, 42], health_policy=1
            ),
        )
    )
    assert ranged.vips == (NetworkAddress("", ipaddress.ip_address("10.20.9.9")),)
    assert ranged.cidr_vips == (NetworkCidr("", ipaddress.ip_network("10.20.0.0/16")),)
    assert ranged.ip_families is None
    assert ranged.load_balancer == LoadBalancer(
        LoadBalancerMode.STANDARD, (LoadBalancerScope.REGION,), HealthPolicy.ALLOW_ALL
    )


def test_policy_rejections() -> None:
    def pol(**fields: Any) -> bytes:
        base: dict[str, Any] = {"name": "p", "namespace": "ns"}
        base.update(fields)
        return authorization_pb2.Authorization(**base).SerializeToString()

    def with_match(m: authorization_pb2.Match) -> bytes:
        rule = authorization_pb2.Rule(clauses=[authorization_pb2.Clause(matches=[m])])
        return pol(rules=[rule])

    cases = {
        pol(name=""): "authorization policy needs a name and a namespace",
        pol(scope=5): "unsupported policy scope 5",
        pol(action=2): "unsupported policy action 2",
    }
    for payload, reason in cases.items():
        decoded = decode_response(response(AUTHORIZATION_TYPE, ("ns/p", payload)))
        assert reason in decoded.rejected["ns/p"], payload


UNKNOWN_KIND = authorization_pb2.StringMatch()  # a newer match kind this version cannot read
BAD_CIDR = authorization_pb2.Address(address=bytes(4), length=33)
PEER = Identity("cluster.local", "apps", "web")


def decoded_policy(action: int, match: authorization_pb2.Match) -> Authorization:
    rule = authorization_pb2.Rule(clauses=[authorization_pb2.Clause(matches=[match])])
    payload = authorization_pb2.Authorization(
        name="p", namespace="ns", action=action, rules=[rule]
    ).SerializeToString()
    decoded = decode_response(response(AUTHORIZATION_TYPE, ("ns/p", payload)))
    assert decoded.rejected == {}, decoded.rejected
    (policy,) = decoded.policies
    return policy


def allowed(policy: Authorization, port: int = 80, src: str = "10.0.0.5") -> bool:
    conn = Connection(ipaddress.ip_address(src), PEER, ipaddress.ip_address("10.0.0.9"), port)
    return evaluate([policy], conn).allowed


def test_an_unreadable_entry_never_costs_a_deny() -> None:
    """A DENY keeps working with what it can read: the unreadable entry is dropped, so the
    policy denies at least what it was written to deny (here: all of port 80)."""
    deny = authorization_pb2.DENY
    only_unknown = decoded_policy(
        deny, authorization_pb2.Match(principals=[UNKNOWN_KIND], destination_ports=[80])
    )
    assert only_unknown.rules[0][0] == (Match(destination_ports=(80,)),)
    assert not allowed(only_unknown) and allowed(only_unknown, port=81)
    mixed = decoded_policy(
        deny,
        authorization_pb2.Match(
            not_source_ips=[BAD_CIDR], destination_ports=[80, 65536], not_namespaces=[UNKNOWN_KIND]
        ),
    )
    assert mixed.rules[0][0] == (Match(destination_ports=(80,)),)
    assert not allowed(mixed)


def test_an_unreadable_entry_never_widens_an_allow() -> None:
    """In an ALLOW, a match with an entry it cannot read allows only what it can prove: an
    unreadable positive entry matches nothing, an unreadable negative one excludes everything."""
    allow = authorization_pb2.ALLOW
    some = decoded_policy(
        allow,
        authorization_pb2.Match(
            principals=[UNKNOWN_KIND, authorization_pb2.StringMatch(exact=str(PEER)[9:])]
        ),
    )
    assert some.rules[0][0] == (
        Match(principals=(StringMatch(StringMatchKind.EXACT, str(PEER)[9:]),)),
    )
    assert allowed(some)
    for match in (
        authorization_pb2.Match(principals=[UNKNOWN_KIND]),
        authorization_pb2.Match(source_ips=[BAD_CIDR]),
        authorization_pb2.Match(not_principals=[UNKNOWN_KIND], destination_ports=[80]),
        authorization_pb2.Match(destination_ports=[65536]),
    ):
        policy = decoded_policy(allow, match)
        assert policy.rules[0][0] == (Match(),), match
        assert not allowed(policy), match


def test_a_partly_invalid_response_keeps_its_valid_part() -> None:
    good = encode_resource(ADDRESS_TYPE, WORKLOAD.uid, WORKLOAD).resource.resource.value
    service = encode_resource(ADDRESS_TYPE, SERVICE.key, SERVICE).resource.resource.value
    pb = discovery_pb2.DeltaDiscoveryResponse.FromString(
        response(
            ADDRESS_TYPE,
            (WORKLOAD.uid, good),
            ("bad", address(uid="bad", tunnel_protocol=7)),
            (SERVICE.key, service),
            (WORKLOAD.uid, good),
            removed=("old",),
        )
    )
    pb.resources.add(name="empty", version="v")
    wrong = pb.resources.add(name="typed", version="v")
    wrong.resource.type_url = AUTHORIZATION_TYPE
    decoded = decode_response(pb.SerializeToString())
    assert decoded.workloads == [WORKLOAD] and decoded.services == [SERVICE]
    assert decoded.removed == ("old",)
    assert set(decoded.accepted) == {WORKLOAD.uid, SERVICE.key}
    assert decoded.rejected == {
        "bad": "unsupported tunnel protocol 7",
        WORKLOAD.uid: "listed twice in one response",
        "empty": "no resource payload",
        "typed": f"payload is a {AUTHORIZATION_TYPE!r}, not a {ADDRESS_TYPE!r}",
    }


def test_unknown_types_and_garbage_messages() -> None:
    other = decode_response(response("type.googleapis.com/other", ("x", b"")))
    assert other.accepted == {} and other.rejected == {}
    with pytest.raises(XdsDecodeError, match="not a DeltaDiscoveryResponse"):
        decode_response(b"\x0a\xff")
    with pytest.raises(XdsDecodeError, match="not a DeltaDiscoveryRequest"):
        decode_request(b"\x12\x05ab")


def _valid_response() -> bytes:
    encoded = [
        encode_resource(ADDRESS_TYPE, WORKLOAD.uid, WORKLOAD),
        encode_resource(ADDRESS_TYPE, SERVICE.key, SERVICE),
    ]
    return response(ADDRESS_TYPE, *((e.name, e.resource.resource.value) for e in encoded))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
    st.binary(max_size=64),
)
def test_damaged_responses_are_refused_cleanly(flips: list[tuple[int, int]], tail: bytes) -> None:
    """A mutated response either decodes (possibly with rejected resources) or raises
    XdsDecodeError; nothing else escapes, what is accepted are model objects, and every
    rejection has a one-line reason (it goes into the NACK)."""
    data = bytearray(_valid_response())
    for position, value in flips:
        data[position % len(data)] = value
    try:
        decoded = decode_response(bytes(data) + tail)
    except XdsDecodeError as e:
        assert str(e).startswith("not a DeltaDiscoveryResponse: ")
        return
    assert all(isinstance(w, Workload) for w in decoded.workloads)
    assert all(isinstance(s, Service) for s in decoded.services)
    assert len(decoded.workloads) + len(decoded.services) == len(decoded.accepted)
    assert all(reason and "\n" not in reason for reason in decoded.rejected.values())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_random_requests_are_refused_cleanly(raw: bytes) -> None:
    try:
        request, node = decode_request(raw)
    except XdsDecodeError as e:
        assert str(e).startswith("not a DeltaDiscoveryRequest: ")
    else:
        assert isinstance(request, Request)
        assert node is None or isinstance(node, NodeInfo)
