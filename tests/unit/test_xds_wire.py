"""Wire compatibility with Istio's workload API, both ways, by golden bytes.

Messages are hand-encoded here with a few lines of protobuf wire format and Istio's field numbers,
written out again here (not taken from our generated classes; docs/istio-compat.md, "Workload
xDS"):
- Istio-shaped responses (as istiod would send them, with fields we do not model and unknown
  fields) are decoded by the agent's decoder into the expected model objects;
- our server's and client's encodings are parsed back field by field and checked against the
  numbering written here.
"""

from __future__ import annotations

import ipaddress

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
from ztunnel_py.model.workload import (
    AppProtocol,
    IpFamilies,
    LoadBalancer,
    LoadBalancerMode,
    LoadBalancerScope,
    Locality,
    NetworkCidr,
    NetworkMode,
)
from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, Delta, Request
from ztunnel_py.xds.convert import (
    NodeInfo,
    decode_request,
    decode_response,
    encode_request,
    encode_resource,
    encode_response,
)

# --- a tiny protobuf wire codec ----------------------------------------------------------------

VARINT, LEN = 0, 2


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def vint(field: int, value: int) -> bytes:
    return varint(field << 3 | VARINT) + varint(value)


def ld(field: int, *parts: bytes | str) -> bytes:
    """A length-delimited field: string, bytes or a message made of `parts`."""
    data = b"".join(p.encode() if isinstance(p, str) else p for p in parts)
    return varint(field << 3 | LEN) + varint(len(data)) + data


def packed(field: int, values: list[int]) -> bytes:
    return ld(field, b"".join(varint(v) for v in values))


Fields = dict[int, list[int | bytes]]


def parse(data: bytes) -> Fields:
    """Field number -> values (ints for varints, bytes for length-delimited fields)."""
    fields: Fields = {}
    pos = 0

    def read_varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = read_varint()
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value = read_varint()
        elif wire_type == LEN:
            length = read_varint()
            value = data[pos : pos + length]
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {number}")
        fields.setdefault(number, []).append(value)
    return fields


def one(fields: Fields, number: int) -> int | bytes:
    (value,) = fields[number]
    return value


def sub(fields: Fields, number: int) -> Fields:
    value = one(fields, number)
    assert isinstance(value, bytes)
    return parse(value)


def subs(fields: Fields, number: int) -> list[Fields]:
    return [parse(v) for v in fields.get(number, []) if isinstance(v, bytes)]


def text(fields: Fields, number: int) -> str:
    value = one(fields, number)
    assert isinstance(value, bytes)
    return value.decode()


def ip(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def response(type_url: str, resources: list[tuple[str, bytes]], removed: list[str]) -> bytes:
    """DeltaDiscoveryResponse: 1 system_version_info, 2 resources, 4 type_url, 5 nonce,
    6 removed_resources; Resource: 1 version, 2 resource (Any: 1 type_url, 2 value), 3 name."""
    return b"".join(
        [
            ld(1, "2024-01-01T00:00:00Z/7"),
            *(
                ld(2, ld(1, "v1"), ld(2, ld(1, type_url), ld(2, payload)), ld(3, name))
                for name, payload in resources
            ),
            ld(4, type_url),
            ld(5, "nonce-1"),
            *(ld(6, name) for name in removed),
        ]
    )


# --- Istio-shaped messages -> our agent ---------------------------------------------------------

UID = "Kubernetes//Pod/default/productpage-v1-87d54dd59-fn6vw"

# istio.workload.Address{workload = 1}
ISTIO_WORKLOAD = ld(
    1,
    ld(20, UID),
    ld(1, "productpage-v1-87d54dd59-fn6vw"),
    ld(2, "default"),
    ld(3, ip("10.244.1.10")),
    ld(3, ip("fd00::a")),
    ld(4, "net-1"),
    vint(5, 1),  # tunnel_protocol HBONE
    ld(6, "example.org"),
    ld(7, "bookinfo-productpage"),
    # waypoint: GatewayAddress{address = 2: NetworkAddress{network 1, address 2}, port 3}
    ld(8, ld(2, ld(1, "net-1"), ld(2, ip("10.244.2.20"))), vint(3, 15008)),
    # network_gateway (not modelled: ignored)
    ld(19, ld(2, ld(2, ip("192.0.2.1"))), vint(3, 15008)),
    ld(9, "ambient-worker"),
    ld(10, "productpage"),
    ld(11, "v1"),
    vint(12, 2),  # workload_type POD
    ld(13, "productpage-v1"),
    vint(14, 1),  # native_tunnel
    # services map<string, PortList>: entry{1 key, 2 value: PortList{1 ports: Port{1, 2, 3}}}
    ld(
        22,
        ld(1, "default/productpage.default.svc.cluster.local"),
        ld(2, ld(1, vint(1, 9080), vint(2, 9080), vint(3, 1))),
    ),
    ld(16, "default/productpage-viewer"),
    vint(17, 1),  # status UNHEALTHY
    ld(18, "cluster-1"),
    ld(24, ld(1, "us-east"), ld(2, "us-east-1a")),  # locality
    vint(25, 1),  # network_mode HOST_NETWORK
    ld(27, vint(1, 3)),  # capacity UInt32Value{value = 1}
    ld(99, "a field from the future"),  # unknown fields are skipped
)

# istio.workload.Address{service = 2}
ISTIO_SERVICE = ld(
    2,
    ld(1, "productpage"),
    ld(2, "default"),
    ld(3, "productpage.default.svc.cluster.local"),
    ld(4, ld(1, ""), ld(2, ip("10.96.0.15"))),
    ld(5, vint(1, 9080), vint(2, 9080), vint(3, 1)),  # app_protocol HTTP11
    ld(5, vint(1, 9443)),  # target_port 0: named port, resolved per workload
    ld(6, "spiffe://example.org/ns/default/sa/extra"),
    # waypoint: GatewayAddress{hostname = 1: NamespacedHostname{1 namespace, 2 hostname}}
    ld(7, ld(1, ld(1, "default"), ld(2, "waypoint.default.svc.cluster.local")), vint(3, 15008)),
    ld(8, packed(1, [2, 1]), vint(2, 2)),  # load_balancing: ZONE, REGION; FAILOVER
    vint(9, 3),  # ip_families DUAL
    ld(4, ld(1, ""), ld(2, ip("10.20.0.0")), vint(3, 16)),  # a range VIP (ServiceEntry CIDR)
    vint(11, 1),  # canonical
)

# istio.security.Authorization
ISTIO_POLICY = b"".join(
    [
        ld(1, "productpage-viewer"),
        ld(2, "default"),
        vint(3, 2),  # WORKLOAD_SELECTOR
        vint(4, 1),  # DENY
        ld(
            5,  # rules
            ld(
                1,  # clauses
                ld(
                    2,  # matches
                    ld(1, ld(1, "default")),  # namespaces: exact
                    ld(2, ld(2, "kube-")),  # not_namespaces: prefix
                    ld(11, ld(1, "default"), ld(2, "sleep")),  # service_accounts
                    ld(3, ld(3, "/sa/sleep")),  # principals: suffix
                    ld(4, ld(4, b"")),  # not_principals: presence (Empty)
                    ld(5, ld(1, ip("10.0.0.0")), vint(2, 8)),  # source_ips
                    ld(8, ld(1, ip("fd00::")), vint(2, 64)),  # not_destination_ips
                    packed(9, [9080, 9443]),  # destination_ports, packed
                    vint(10, 15000),  # not_destination_ports, unpacked
                ),
                ld(2, ld(12, ld(1, "other"), ld(2, "robot"))),  # OR: not_service_accounts
            ),
        ),
        vint(6, 1),  # dry_run
    ]
)


def test_istio_workload_is_understood() -> None:
    decoded = decode_response(response(ADDRESS_TYPE, [(UID, ISTIO_WORKLOAD)], ["gone/uid"]))
    assert decoded.rejected == {}
    assert decoded.nonce == "nonce-1" and decoded.system_version == "2024-01-01T00:00:00Z/7"
    assert decoded.accepted == {UID: "v1"}
    assert decoded.removed == ("gone/uid",)
    (w,) = decoded.workloads
    assert w == Workload(
        uid=UID,
        name="productpage-v1-87d54dd59-fn6vw",
        namespace="default",
        addresses=(ipaddress.ip_address("10.244.1.10"), ipaddress.ip_address("fd00::a")),
        service_account="bookinfo-productpage",
        trust_domain="example.org",
        node="ambient-worker",
        network="net-1",
        tunnel_protocol=TunnelProtocol.HBONE,
        canonical_name="productpage",
        canonical_revision="v1",
        workload_name="productpage-v1",
        workload_type="pod",
        waypoint=GatewayAddress(NetworkAddress("net-1", ipaddress.ip_address("10.244.2.20"))),
        services={"default/productpage.default.svc.cluster.local": {9080: 9080}},
        authorization_policies=("default/productpage-viewer",),
        status=WorkloadStatus.UNHEALTHY,
        cluster_id="cluster-1",
        capacity=3,
        network_mode=NetworkMode.HOST_NETWORK,
        locality=Locality("us-east", "us-east-1a"),
        native_tunnel=True,
    )


def test_istio_defaults_for_empty_fields() -> None:
    minimal = ld(1, ld(20, "u1"), ld(2, "ns"), ld(3, ip("10.0.0.1")))
    (w,) = decode_response(response(ADDRESS_TYPE, [("u1", minimal)], [])).workloads
    assert (w.trust_domain, w.service_account, w.cluster_id, w.capacity) == (
        "cluster.local",
        "default",
        "Kubernetes",
        1,
    )
    assert w.tunnel_protocol is TunnelProtocol.NONE and w.workload_type == "deployment"


def test_istio_service_is_understood() -> None:
    name = "default/productpage.default.svc.cluster.local"
    decoded = decode_response(response(ADDRESS_TYPE, [(name, ISTIO_SERVICE)], []))
    assert decoded.rejected == {}
    (s,) = decoded.services
    assert s == Service(
        name="productpage",
        namespace="default",
        hostname="productpage.default.svc.cluster.local",
        vips=(NetworkAddress("", ipaddress.ip_address("10.96.0.15")),),
        ports={9080: 9080, 9443: 0},
        subject_alt_names=("spiffe://example.org/ns/default/sa/extra",),
        waypoint=GatewayAddress(
            NamespacedHostname("default", "waypoint.default.svc.cluster.local")
        ),
        app_protocols={9080: AppProtocol.HTTP11},
        cidr_vips=(NetworkCidr("", ipaddress.ip_network("10.20.0.0/16")),),
        ip_families=IpFamilies.DUAL,
        load_balancer=LoadBalancer(
            LoadBalancerMode.FAILOVER, (LoadBalancerScope.ZONE, LoadBalancerScope.REGION)
        ),
        canonical=True,
    )


def test_istio_authorization_is_understood() -> None:
    name = "default/productpage-viewer"
    decoded = decode_response(response(AUTHORIZATION_TYPE, [(name, ISTIO_POLICY)], []))
    assert decoded.rejected == {}
    (p,) = decoded.policies
    exact, prefix, suffix = StringMatchKind.EXACT, StringMatchKind.PREFIX, StringMatchKind.SUFFIX
    assert p == Authorization(
        name="productpage-viewer",
        namespace="default",
        scope=PolicyScope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=(
            (
                (
                    Match(
                        namespaces=(StringMatch(exact, "default"),),
                        not_namespaces=(StringMatch(prefix, "kube-"),),
                        service_accounts=(ServiceAccountMatch("default", "sleep"),),
                        principals=(StringMatch(suffix, "/sa/sleep"),),
                        not_principals=(StringMatch(StringMatchKind.PRESENCE),),
                        source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
                        not_destination_ips=(ipaddress.ip_network("fd00::/64"),),
                        destination_ports=(9080, 9443),
                        not_destination_ports=(15000,),
                    ),
                    Match(not_service_accounts=(ServiceAccountMatch("other", "robot"),)),
                ),
            ),
        ),
        dry_run=True,
    )


def test_istio_shaped_requests_are_understood_by_the_server() -> None:
    # DeltaDiscoveryRequest: 1 node (1 id, 3 metadata Struct{1 map<string, Value{3 string}>}),
    # 2 type_url, 3 subscribe, 4 unsubscribe, 5 initial_resource_versions, 6 nonce, 7 error
    node = ld(
        1,
        ld(1, "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local"),
        ld(3, ld(1, ld(1, "NODE_NAME"), ld(2, ld(3, "ambient-worker")))),
    )
    raw = b"".join(
        [
            node,
            ld(2, ADDRESS_TYPE),
            ld(3, "*"),
            ld(4, "*"),
            ld(5, ld(1, UID), ld(2, "")),
            ld(5, ld(1, "default/productpage.default.svc.cluster.local"), ld(2, "abc")),
        ]
    )
    request, info = decode_request(raw)
    assert info == NodeInfo(
        "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local",
        {"NODE_NAME": "ambient-worker"},
    )
    assert request.type_url == ADDRESS_TYPE
    assert (request.subscribe, request.unsubscribe) == (("*",), ("*",))
    assert dict(request.initial_versions) == {
        UID: "",
        "default/productpage.default.svc.cluster.local": "abc",
    }
    nack, _ = decode_request(
        ld(2, AUTHORIZATION_TYPE) + ld(6, "n-3") + ld(7, vint(1, 3), ld(2, "x"))
    )
    assert nack == Request(AUTHORIZATION_TYPE, response_nonce="n-3", error="x")


# --- our encodings, read back with Istio's numbering --------------------------------------------


def test_our_workload_encoding_matches_istio_numbering() -> None:
    w = Workload(
        uid="Kubernetes//Pod/demo/a",
        name="a",
        namespace="demo",
        addresses=(ipaddress.ip_address("10.0.0.7"),),
        service_account="sa",
        trust_domain="cluster.local",
        node="node-1",
        network="n",
        tunnel_protocol=TunnelProtocol.HBONE,
        canonical_name="app",
        canonical_revision="v2",
        workload_name="app-v2",
        workload_type="pod",
        waypoint=GatewayAddress(NamespacedHostname("demo", "wp.demo.svc.cluster.local"), 15008),
        services={"demo/app.demo.svc.cluster.local": {80: 8080}},
        authorization_policies=("demo/p",),
        status=WorkloadStatus.UNHEALTHY,
        cluster_id="c1",
        capacity=0,
    )
    encoded = encode_resource(ADDRESS_TYPE, w.uid, w)
    resource = parse(encoded.resource.SerializeToString())
    assert text(resource, 3) == w.uid and text(resource, 1) == encoded.version
    any_ = sub(resource, 2)
    assert text(any_, 1) == ADDRESS_TYPE
    address = sub(any_, 2)
    assert set(address) == {1}  # the workload arm of the oneof
    f = sub(address, 1)
    assert text(f, 20) == w.uid
    assert (text(f, 1), text(f, 2), text(f, 4)) == ("a", "demo", "n")
    assert f[3] == [ip("10.0.0.7")]
    assert one(f, 5) == 1  # HBONE
    assert 6 not in f  # trust domain cluster.local: left out, as istiod does
    assert (text(f, 7), text(f, 9)) == ("sa", "node-1")
    assert (text(f, 10), text(f, 11), text(f, 13)) == ("app", "v2", "app-v2")
    assert one(f, 12) == 2  # POD
    assert one(f, 17) == 1  # UNHEALTHY
    assert text(f, 18) == "c1"
    assert f[16] == [b"demo/p"]
    waypoint = sub(f, 8)
    assert sub(waypoint, 1) == {1: [b"demo"], 2: [b"wp.demo.svc.cluster.local"]}
    assert one(waypoint, 3) == 15008
    (entry,) = subs(f, 22)
    assert text(entry, 1) == "demo/app.demo.svc.cluster.local"
    assert subs(sub(entry, 2), 1) == [{1: [80], 2: [8080]}]
    assert sub(f, 27) == {}  # capacity 0: present, default value
    assert 15 not in f  # reserved


def test_our_service_and_policy_encodings_match_istio_numbering() -> None:
    s = Service(
        name="app",
        namespace="demo",
        hostname="app.demo.svc.cluster.local",
        vips=(NetworkAddress("", ipaddress.ip_address("10.96.0.1")),),
        ports={80: 8080, 443: 0},
        subject_alt_names=("spiffe://cluster.local/ns/demo/sa/x",),
        waypoint=GatewayAddress(NetworkAddress("", ipaddress.ip_address("10.0.0.9")), 15008),
    )
    payload = encode_resource(ADDRESS_TYPE, s.key, s).resource.resource.value
    f = sub(parse(payload), 2)  # the service arm of the oneof
    assert (text(f, 1), text(f, 2), text(f, 3)) == ("app", "demo", "app.demo.svc.cluster.local")
    assert subs(f, 4) == [{2: [ip("10.96.0.1")]}]  # empty network is not on the wire
    assert subs(f, 5) == [{1: [80], 2: [8080]}, {1: [443]}]
    assert f[6] == [b"spiffe://cluster.local/ns/demo/sa/x"]
    assert sub(sub(f, 7), 2) == {2: [ip("10.0.0.9")]}

    exact = StringMatch(StringMatchKind.EXACT, "demo")
    p = Authorization(
        name="p",
        namespace="demo",
        scope=PolicyScope.NAMESPACE,
        action=Action.DENY,
        rules=(
            (
                (
                    Match(
                        namespaces=(exact,),
                        not_principals=(StringMatch(StringMatchKind.PRESENCE),),
                        service_accounts=(ServiceAccountMatch("demo", "sa"),),
                        source_ips=(ipaddress.ip_network("10.1.0.0/16"),),
                        destination_ports=(80, 443),
                    ),
                ),
            ),
        ),
        dry_run=True,
    )
    f = parse(encode_resource(AUTHORIZATION_TYPE, p.key, p).resource.resource.value)
    assert (text(f, 1), text(f, 2), one(f, 3), one(f, 4), one(f, 6)) == ("p", "demo", 1, 1, 1)
    (rule,) = subs(f, 5)
    (clause,) = subs(rule, 1)
    assert 1 not in clause  # field 1 of Clause is unused upstream
    (m,) = subs(clause, 2)
    assert subs(m, 1) == [{1: [b"demo"]}]
    assert subs(m, 4) == [{4: [b""]}]  # presence: an empty google.protobuf.Empty
    assert subs(m, 11) == [{1: [b"demo"], 2: [b"sa"]}]
    assert subs(m, 5) == [{1: [ip("10.1.0.0")], 2: [16]}]
    assert one(m, 9) == varint(80) + varint(443)  # proto3 packs repeated uint32


def test_our_requests_and_responses_match_envoy_numbering() -> None:
    node = NodeInfo("ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local", {"A": "b"})
    initial = parse(encode_request(Request(ADDRESS_TYPE, initial_versions={"x": "1"}), node))
    assert text(initial, 2) == ADDRESS_TYPE
    n = sub(initial, 1)
    assert text(n, 1) == node.id
    (entry,) = subs(sub(n, 3), 1)  # Struct.fields map entry
    assert text(entry, 1) == "A" and sub(entry, 2) == {3: [b"b"]}
    assert subs(initial, 5) == [{1: [b"x"], 2: [b"1"]}]

    nack = parse(encode_request(Request(ADDRESS_TYPE, response_nonce="n1", error="x: bad")))
    assert text(nack, 6) == "n1"
    assert sub(nack, 7) == {1: [3], 2: [b"x: bad"]}
    ack = parse(encode_request(Request(ADDRESS_TYPE, response_nonce="n1")))
    assert 7 not in ack and 1 not in ack

    w = Workload("u1", "a", "demo", (ipaddress.ip_address("10.0.0.1"),))
    encoded = encode_resource(ADDRESS_TYPE, "u1", w)
    raw = encode_response(Delta(ADDRESS_TYPE, "n2", "42", ("u1",), ("u0",)), {"u1": encoded})
    f = parse(raw)
    assert (text(f, 1), text(f, 4), text(f, 5), text(f, 6)) == ("42", ADDRESS_TYPE, "n2", "u0")
    (resource,) = subs(f, 2)
    assert (text(resource, 3), text(resource, 1)) == ("u1", encoded.version)
