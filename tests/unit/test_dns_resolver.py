"""The DNS proxy's sans-IO core against ztunnel's own cases (`src/dns/server.rs` tests): name
expansion, wildcards, namespace preference, families, headless services, what is forwarded,
and truncation for UDP. No sockets."""

from __future__ import annotations

import ipaddress
import random

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ztunnel_py.dnsproxy.resolver import (
    TCP_LIMIT,
    UDP_LIMIT,
    BadQuery,
    MeshResolver,
    encode,
    parse_query,
    udp_limit,
    wildcards,
)
from ztunnel_py.model import NetworkAddress, Service, Workload
from ztunnel_py.model.workload import IpFamilies
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.metrics import DnsMetrics


def n(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def svc(name: str, ns: str, host: str, *vips: str, **kw: object) -> Service:
    return Service(name, ns, host, tuple(NetworkAddress.parse(v) for v in vips), **kw)


def wl(uid: str, ns: str, *ips: str, services: dict[str, dict[int, int]] | None = None) -> Workload:
    return Workload(
        uid,
        uid,
        ns,
        tuple(ipaddress.ip_address(i) for i in ips),
        canonical_name=uid,
        services=services or {},
    )


CLIENT = wl("client", "ns1", "10.0.0.1")


@pytest.fixture
def resolver() -> MeshResolver:
    state = ProxyState()
    services = [
        svc("productpage", "ns1", "productpage.ns1.svc.cluster.local", "9.9.9.9"),
        svc("example", "ns2", "example.ns2.svc.cluster.local", "10.10.10.10"),
        svc("google", "ns1", "www.google.com", "1.1.1.1"),
        svc("dual", "ns1", "dual.localhost", "2.2.2.2", "2001:db8::ff00:42:8329"),
        svc("ipv6", "ns1", "ipv6.localhost", "2001:db8::1"),
        svc("ipv4", "ns1", "ipv4.localhost", "3.3.3.3"),
        svc("wild", "ns1", "*.wildcard", "10.10.10.10"),
        svc("wild-b", "ns1", "*.b.wildcard", "11.11.11.11"),
        svc("mesh", "ns1", "*.svc.mesh.company.net", "10.1.2.3"),
        svc("headless", "ns1", "headless.ns1.svc.cluster.local"),
        svc("headless-ext", "ns1", "headless.example.com"),
        svc("everywhere", "ns1", "everywhere.io", "10.10.10.112"),
        svc("everywhere", "ns2", "everywhere.io", "10.10.10.113"),
        svc("preferred", "preferred-ns", "preferred.io", "10.10.10.211"),
        svc("preferred", "ns3", "preferred.io", "10.10.10.212"),
        svc("canonical", "ns3", "canonical.svc", "10.10.10.141", canonical=True),
        svc("canonical", "ns2", "canonical.svc", "10.10.10.142"),
        svc("nw2", "ns1", "nw2-only.ns1.svc.cluster.local", "nw2/20.20.20.20"),
        svc(
            "both", "ns1", "both-networks.ns1.svc.cluster.local", "/21.21.21.21", "nw2/22.22.22.22"
        ),
        svc(
            "v4only",
            "ns1",
            "v4only.ns1.svc.cluster.local",
            "4.4.4.4",
            "2001:db8::4",
            ip_families=IpFamilies.IPV4,
        ),
    ]
    headless_key = "ns1/headless.ns1.svc.cluster.local"
    workloads = [
        CLIENT,
        wl("h0", "ns1", "30.30.30.30", "2001:db8::30", services={headless_key: {80: 80}}),
        wl("h1", "ns1", "31.31.31.31", "2001:db8::31", services={headless_key: {80: 80}}),
    ]
    state.replace(workloads, services, [])
    return MeshResolver(state, preferred_namespace="preferred-ns", rng=random.Random(7))


def ask(
    resolver: MeshResolver, host: str, qtype: str = "A", client: Workload = CLIENT
) -> list[str] | None:
    """The answer section as text lines, sorted (the proxy shuffles); None when forwarded."""
    query = dns.message.make_query(host, qtype)
    resolution = resolver.resolve(client, query)
    if resolution.response is None:
        return None
    response = resolution.response
    assert response.flags & dns.flags.AA
    assert response.rcode() == dns.rcode.NOERROR
    return sorted(
        f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
        for rrset in response.answer
        for rdata in rrset
    )


@pytest.mark.parametrize(
    ("host", "namespace", "expected"),
    [
        ("name.", "ns1", ["name.ns1.svc.cluster.local."]),
        ("name.ns2.", "ns1", ["name.ns2.svc.cluster.local.", "name.ns2.ns1.svc.cluster.local."]),
        (
            "name.ns2.svc.",
            "ns1",
            ["name.ns2.svc.cluster.local.", "name.ns2.svc.svc.cluster.local."],
        ),
        ("name.ns2.not-svc.", "ns1", ["name.ns2.not-svc.svc.cluster.local."]),
        ("pod.sub-domain.ns.svc.", "ns1", ["pod.sub-domain.ns.svc.cluster.local."]),
        ("pod.sub-domain.ns.not-svc.", "ns1", []),
        ("name.ns2.svc.cluster.", "ns1", []),
        ("name.ns2.svc.cluster.local.", "ns1", []),
        ("www.google.com.", "ns1", ["www.google.com.svc.cluster.local."]),
    ],
)
def test_short_names_expand_as_ztunnel_does(
    resolver: MeshResolver, host: str, namespace: str, expected: list[str]
) -> None:
    assert [str(x) for x in resolver.kube_fqdns(n(host), namespace)] == expected


def test_wildcards_of_decreasing_specificity() -> None:
    assert wildcards(n("svc1.")) == [n("svc1.")]
    assert [str(x) for x in wildcards(n("svc1.ns1.svc.cluster.local."))] == [
        "svc1.ns1.svc.cluster.local.",
        "*.ns1.svc.cluster.local.",
        "*.svc.cluster.local.",
        "*.cluster.local.",
        "*.local.",
    ]


@pytest.mark.parametrize(
    ("host", "qtype", "expected"),
    [
        ("www.google.com.", "A", ["www.google.com. 30 A 1.1.1.1"]),
        (
            "www.google.com.ns1.svc.cluster.local.",
            "A",
            [
                "www.google.com. 30 A 1.1.1.1",
                "www.google.com.ns1.svc.cluster.local. 30 CNAME www.google.com.",
            ],
        ),
        (
            "productpage.ns1.svc.cluster.local.",
            "A",
            ["productpage.ns1.svc.cluster.local. 30 A 9.9.9.9"],
        ),
        ("productpage.ns1.", "A", ["productpage.ns1. 30 A 9.9.9.9"]),
        ("productpage.", "A", ["productpage. 30 A 9.9.9.9"]),
        (
            "productpage.ns1.ns1.svc.cluster.local.",
            "A",
            [
                "productpage.ns1. 30 A 9.9.9.9",
                "productpage.ns1.ns1.svc.cluster.local. 30 CNAME productpage.ns1.",
            ],
        ),
        ("productpage.ns1.ns1.svc.cluster.local.", "AAAA", []),
        ("example.ns2.", "A", ["example.ns2. 30 A 10.10.10.10"]),
        ("example.ns2.svc.", "A", ["example.ns2.svc. 30 A 10.10.10.10"]),
        ("dual.localhost.", "A", ["dual.localhost. 30 A 2.2.2.2"]),
        ("dual.localhost.", "AAAA", ["dual.localhost. 30 AAAA 2001:db8::ff00:42:8329"]),
        ("ipv6.localhost.", "A", []),
        ("ipv4.localhost.", "AAAA", []),
        ("foo.wildcard.", "A", ["foo.wildcard. 30 A 10.10.10.10"]),
        ("a.b.wildcard.", "A", ["a.b.wildcard. 30 A 11.11.11.11"]),
        ("foo.svc.mesh.company.net.", "A", ["foo.svc.mesh.company.net. 30 A 10.1.2.3"]),
        ("foo.foons.svc.mesh.company.net.", "A", ["foo.foons.svc.mesh.company.net. 30 A 10.1.2.3"]),
        # a wildcard found by stripping a search domain: no CNAME, the asked name answers
        (
            "foo.svc.mesh.company.net.ns1.svc.cluster.local.",
            "A",
            ["foo.svc.mesh.company.net.ns1.svc.cluster.local. 30 A 10.1.2.3"],
        ),
        ("nw2-only.ns1.svc.cluster.local.", "A", []),
        (
            "both-networks.ns1.svc.cluster.local.",
            "A",
            ["both-networks.ns1.svc.cluster.local. 30 A 21.21.21.21"],
        ),
        (
            "headless.ns1.svc.cluster.local.",
            "A",
            [
                "headless.ns1.svc.cluster.local. 30 A 30.30.30.30",
                "headless.ns1.svc.cluster.local. 30 A 31.31.31.31",
            ],
        ),
        (
            "headless.ns1.svc.cluster.local.",
            "AAAA",
            [
                "headless.ns1.svc.cluster.local. 30 AAAA 2001:db8::30",
                "headless.ns1.svc.cluster.local. 30 AAAA 2001:db8::31",
            ],
        ),
        ("preferred.io.", "A", ["preferred.io. 30 A 10.10.10.211"]),
        ("everywhere.io.", "A", ["everywhere.io. 30 A 10.10.10.112"]),
        ("canonical.svc.", "A", ["canonical.svc. 30 A 10.10.10.141"]),
        ("v4only.ns1.svc.cluster.local.", "AAAA", []),
        ("V4ONLY.NS1.SVC.CLUSTER.LOCAL.", "A", ["V4ONLY.NS1.SVC.CLUSTER.LOCAL. 30 A 4.4.4.4"]),
    ],
)
def test_mesh_names_answer_authoritatively(
    resolver: MeshResolver, host: str, qtype: str, expected: list[str]
) -> None:
    assert ask(resolver, host, qtype) == expected


@pytest.mark.parametrize(
    ("host", "qtype"),
    [
        ("productpage.ns1.", "NS"),  # not A/AAAA
        ("productpage.ns1.", "MX"),
        ("www.bing.com.", "A"),  # not a mesh name
        ("example.", "A"),  # another namespace's short name
        ("headless.example.com.", "A"),  # no VIP and not a Kubernetes headless service
        ("headless.pod0.ns1.svc.cluster.local.", "A"),  # pod hostnames: ztunnel forwards too
    ],
)
def test_everything_else_is_forwarded(resolver: MeshResolver, host: str, qtype: str) -> None:
    assert ask(resolver, host, qtype) is None


def test_the_client_namespace_wins() -> None:
    state = ProxyState()
    state.replace(
        [],
        [
            svc("everywhere", "ns1", "everywhere.io", "10.10.10.112"),
            svc("everywhere", "ns2", "everywhere.io", "10.10.10.113"),
        ],
        [],
    )
    resolver = MeshResolver(state)
    assert ask(resolver, "everywhere.io.", client=wl("c", "ns2", "10.0.0.2")) == [
        "everywhere.io. 30 A 10.10.10.113"
    ]


def test_answers_follow_state_changes(resolver: MeshResolver) -> None:
    assert ask(resolver, "late.ns1.svc.cluster.local.") is None
    resolver.state.replace(
        [CLIENT], [svc("late", "ns1", "late.ns1.svc.cluster.local", "7.7.7.7")], []
    )
    assert ask(resolver, "late.") == ["late. 30 A 7.7.7.7"]


def test_udp_answers_are_truncated_and_tcp_ones_are_not() -> None:
    state = ProxyState()
    vips = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(256)]
    state.replace([CLIENT], [svc("large", "ns1", "large.com", *vips)], [])
    query = dns.message.make_query("large.com.", "A")
    response = MeshResolver(state).resolve(CLIENT, query).response
    assert response is not None

    tcp = dns.message.from_wire(encode(response, TCP_LIMIT))
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 256

    wire = encode(response, udp_limit(query))
    udp = dns.message.from_wire(wire)
    assert udp.flags & dns.flags.TC
    assert len(wire) <= UDP_LIMIT
    kept = len(udp.answer[0])
    assert 0 < kept < 256
    # maximal: one more record would not have fitted
    bigger = dns.message.make_response(query)
    bigger.answer.append(
        dns.rrset.from_rdata_list(n("large.com."), 30, list(tcp.answer[0])[: kept + 1])
    )
    assert len(bigger.to_wire()) > UDP_LIMIT


def test_edns_raises_the_udp_limit() -> None:
    assert udp_limit(dns.message.make_query("a.", "A")) == UDP_LIMIT
    assert udp_limit(dns.message.make_query("a.", "A", use_edns=0, payload=1232)) == 1232
    assert udp_limit(dns.message.make_query("a.", "A", use_edns=0, payload=100)) == UDP_LIMIT


def test_bad_queries_get_a_clear_answer_or_none() -> None:
    with pytest.raises(BadQuery) as garbage:
        parse_query(b"\x00")
    assert garbage.value.response is None

    truncated = dns.message.make_query("a.", "A").to_wire()[:15]
    with pytest.raises(BadQuery) as bad:
        parse_query(truncated)
    assert bad.value.response is not None
    assert bad.value.response.rcode() == dns.rcode.FORMERR
    assert bad.value.response.id == int.from_bytes(truncated[:2], "big")

    notify = dns.message.make_query("a.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    with pytest.raises(BadQuery) as unsupported:
        parse_query(notify.to_wire())
    assert unsupported.value.response is not None
    assert unsupported.value.response.rcode() == dns.rcode.NOTIMP

    response = dns.message.make_response(dns.message.make_query("a.", "A"))
    with pytest.raises(BadQuery) as reflected:
        parse_query(response.to_wire())
    assert reflected.value.response is None


def test_dns_metrics_as_ztunnel_names_and_labels_them() -> None:
    registry = CollectorRegistry()
    metrics = DnsMetrics(registry)
    labels = metrics.labels("AAAA", "udp", "web", "")
    metrics.request(labels)
    metrics.forwarded(labels, 0.003, failed=True)
    text = generate_latest(registry).decode()
    series = (
        'request_protocol="udp",request_query_type="aaaa",'
        'source_canonical_revision="unknown",source_canonical_service="web"'
    )
    assert f"istio_dns_requests_total{{{series}}} 1.0" in text
    assert f"istio_dns_upstream_requests_total{{{series}}} 1.0" in text
    assert f"istio_dns_upstream_failures_total{{{series}}} 1.0" in text
    assert f'istio_dns_upstream_request_duration_seconds_bucket{{le="0.001",{series}}} 0.0' in text
    assert f'istio_dns_upstream_request_duration_seconds_bucket{{le="0.005",{series}}} 1.0' in text
    assert f"istio_dns_upstream_request_duration_seconds_count{{{series}}} 1.0" in text
