"""The testbed plan: names, addresses and the pod mix the tests and the demo rely on."""

from __future__ import annotations

import ipaddress

import pytest

from ztunnel_py.model import TunnelProtocol
from ztunnel_py.testbed import prometheus
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.topology import CLIENT, plan


def test_default_plan_has_distinct_identities_and_a_client_per_node() -> None:
    t = plan()
    assert [n.netns for n in t.nodes] == ["zt-node1", "zt-node2"]
    assert t.fabric_netns == "zt-fabric" and t.cp_netns == "zt-cp"
    assert len({p.namespace for p in t.pods}) >= 2
    assert len({(p.namespace, p.service_account) for p in t.pods}) >= 3
    for node in t.nodes:
        assert any(p.role == CLIENT for p in t.pods_on(node.name)), node.name
    echo = t.service("echo")
    assert echo.vip == "10.96.0.10" and echo.hostname == "echo.apps.svc.cluster.local"
    assert echo.port_map == {80: 8080, 8082: 8082, 9090: 9090, 5201: 5201}
    assert len({p.node for p in t.endpoints("echo")}) == 2


def test_echo_has_two_versions_and_declares_its_ports_as_a_user_would() -> None:
    t = plan("zt-", nodes=3, pods_per_node=4)
    versions = {p.name: p.version for p in t.endpoints("echo")}
    assert versions == {
        "echo-1": "v1", "echo-1-3": "v1", "echo-2": "v2", "echo-2-3": "v2",
        "echo-3": "v1", "echo-3-3": "v1",
    }  # fmt: skip
    assert t.pod("echo-2").labels == {"app": "echo", "version": "v2"}
    assert t.pod("web-1").labels == {"app": "web"} and t.pod("web-1").version is None
    echo = t.service("echo")
    # istiod reads the protocol from appProtocol, else from the name's prefix: both forms occur
    assert [(p.name, p.port, p.target_port, p.app_protocol) for p in echo.ports] == [
        ("http", 80, 8080, None),
        ("http2", 8082, 8082, "kubernetes.io/h2c"),
        ("grpc", 9090, 9090, "grpc"),
        ("tcp-iperf", 5201, 5201, None),
    ]
    # only echo's endpoints run the h2c and gRPC servers
    assert t.server_ports(t.pod("echo-1-3")) == (5201, 8080, 8082, 9090)
    assert t.server_ports(t.pod("store-1")) == t.server_ports(t.pod("curl-2")) == (5201, 8080)
    revisions = {w.name: w.canonical_revision for w in t.workloads()}
    assert (revisions["echo-2"], revisions["web-1"]) == ("v2", "latest")


def test_addresses_follow_the_node_subnets() -> None:
    t = plan("zt-", nodes=3, pods_per_node=4)
    assert [n.ip for n in t.nodes] == ["10.250.0.11", "10.250.0.12", "10.250.0.13"]
    for node in t.nodes:
        subnet = ipaddress.ip_network(node.pod_cidr)
        assert ipaddress.ip_address(node.gateway) in subnet
        for pod in t.pods_on(node.name):
            assert ipaddress.ip_address(pod.ip) in subnet
    ips = [p.ip for p in t.pods]
    # 3 x 4 pods, plus the legacy client on node 1
    assert len(ips) == len(set(ips)) == 13
    assert len({p.name for p in t.pods}) == 13
    assert all(p.ipv6 is None for p in t.pods) and all(n.ipv6 is None for n in t.nodes)
    assert {s.name for s in t.services} == {"echo", "store"}


def test_interface_names_fit_the_kernel_limit() -> None:
    t = plan("zt-", nodes=100, pods_per_node=100)
    names = {p.host_iface for p in t.pods} | {n.fabric_iface for n in t.nodes}
    assert max(len(n) for n in names) <= 15


def test_workloads_carry_identity_and_service_ports() -> None:
    t = plan()
    by_name = {w.name: w for w in t.workloads()}
    echo = by_name["echo-2"]
    assert echo.uid == "Kubernetes//Pod/apps/echo-2"
    assert str(echo.identity) == "spiffe://cluster.local/ns/apps/sa/echo"
    assert echo.services == {
        "apps/echo.apps.svc.cluster.local": {80: 8080, 8082: 8082, 9090: 9090, 5201: 5201}
    }
    assert by_name["curl-2"].services == {}
    assert by_name["curl-2"].node == "node2"


@pytest.mark.parametrize(
    ("prefix", "nodes", "pods", "message"),
    [
        ("foo-", 2, 2, "must start with 'zt'"),
        ("zt/../", 2, 2, "must start with 'zt'"),
        ("zt-", 0, 2, "--nodes must be between"),
        ("zt-", 2, 1, "--pods-per-node must be between"),
        ("zt-", 2, 1000, "--pods-per-node must be between"),
    ],
)
def test_bad_sizes_and_prefixes_are_refused(
    prefix: str, nodes: int, pods: int, message: str
) -> None:
    with pytest.raises(TestbedError, match=message):
        plan(prefix, nodes, pods)


def test_unknown_pod_error_lists_the_pods() -> None:
    with pytest.raises(TestbedError, match=r"no pod named 'nope'; pods: echo-1, web-1"):
        plan().pod("nope")


def test_legacy_client_is_outside_the_ambient_namespaces() -> None:
    t = plan()
    assert [p.name for p in t.pods] == ["echo-1", "web-1", "echo-2", "curl-2", "legacy-1"]
    legacy = t.pod("legacy-1")
    assert (legacy.namespace, legacy.node, legacy.ip, legacy.role) == (
        "legacy",
        "node1",
        "10.244.1.250",
        CLIENT,
    )
    assert not legacy.ambient
    assert all(p.ambient for p in t.pods if p is not legacy)
    assert t.namespace_labels == {
        "apps": {"istio.io/dataplane-mode": "ambient"},
        "clients": {"istio.io/dataplane-mode": "ambient"},
        "legacy": {},
    }
    protocols = {w.name: w.tunnel_protocol for w in t.workloads()}
    assert protocols["legacy-1"] is TunnelProtocol.NONE
    assert protocols["web-1"] is TunnelProtocol.HBONE


def test_dual_stack_gives_every_address_an_ipv6_twin() -> None:
    t = plan("zt-", nodes=2, pods_per_node=3, dual_stack=True)
    assert [(n.ipv6, n.pod_cidr6, n.gateway6) for n in t.nodes] == [
        ("fd00:10:250::11", "fd00:10:244:1::/64", "fd00:10:244:1::1"),
        ("fd00:10:250::12", "fd00:10:244:2::/64", "fd00:10:244:2::1"),
    ]
    for node in t.nodes:
        assert node.pod_cidr6 is not None
        for pod in t.pods_on(node.name):
            assert pod.ipv6 is not None
            assert ipaddress.ip_address(pod.ipv6) in ipaddress.ip_network(node.pod_cidr6)
    assert t.pod("legacy-1").ips == ("10.244.1.250", "fd00:10:244:1::250")
    assert len({p.ipv6 for p in t.pods}) == len(t.pods)
    echo = {w.name: w for w in t.workloads()}["echo-2"]
    assert [str(a) for a in echo.addresses] == ["10.244.2.10", "fd00:10:244:2::10"]
    vips = {s.name: [str(v) for v in s.vips] for s in t.mesh_services()}
    assert vips == {
        "echo": ["/10.96.0.10", "/fd00:10:96::10"],
        "store": ["/10.96.0.20", "/fd00:10:96::20"],
    }
    assert t.controlplane_ips == ("10.250.0.2", "fd00:10:250::2")


def test_the_control_plane_is_addressed_over_ipv4_unless_asked() -> None:
    v4 = plan("zt-", dual_stack=True)
    assert (str(v4.controlplane_address), str(v4.controlplane_monitoring)) == (
        "10.250.0.2:15012",
        "10.250.0.2:15014",
    )
    v6 = plan("zt-", dual_stack=True, controlplane_ipv6=True)
    assert (str(v6.controlplane_address), str(v6.controlplane_monitoring)) == (
        "[fd00:10:250::2]:15012",
        "[fd00:10:250::2]:15014",
    )
    with pytest.raises(TestbedError, match="--controlplane-ipv6 needs --dual-stack"):
        plan("zt-", controlplane_ipv6=True)


def test_every_fabric_member_has_addresses_of_its_own() -> None:
    # Prometheus's namespace joins the same bridge; a shared address would make one of the
    # two unreachable, depending on which answered ARP/ND first.
    t = plan("zt-", nodes=3, dual_stack=True)
    members = [
        *t.controlplane_ips,
        *t.dns_ips,
        *t.external_ips,
        prometheus.IP,
        prometheus.IP6,
        *(a for n in t.nodes for a in (n.ip, n.ipv6)),
    ]
    assert len(set(members)) == len(members), members
