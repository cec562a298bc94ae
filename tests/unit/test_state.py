"""ProxyState: lookups, endpoint selection, policy sets, deltas, notifications, config_dump."""

from __future__ import annotations

import ipaddress
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from ztunnel_py.model import (
    Action,
    Authorization,
    GatewayAddress,
    Identity,
    Match,
    NetworkAddress,
    PolicyScope,
    Service,
    StringMatch,
    StringMatchKind,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)
from ztunnel_py.model.workload import HealthPolicy, LoadBalancer, NetworkCidr, NetworkMode
from ztunnel_py.state.mesh import ProxyState, StateChange
from ztunnel_py.xds.localconfig import ConfigError

WEB = "demo/web.demo.svc.cluster.local"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def workload(name: str, address: str, **kw: object) -> Workload:
    fields: dict[str, object] = {
        "uid": f"Kubernetes//Pod/demo/{name}",
        "name": name,
        "namespace": "demo",
        "addresses": (ip(address),),
        "service_account": name,
    }
    fields.update(kw)
    return Workload(**fields)  # type: ignore[arg-type]


def web(**kw: object) -> Service:
    fields: dict[str, object] = {
        "name": "web",
        "namespace": "demo",
        "hostname": "web.demo.svc.cluster.local",
        "vips": (NetworkAddress.parse("/10.96.0.1"),),
        "ports": {80: 8080, 90: 0},
    }
    fields.update(kw)
    return Service(**fields)  # type: ignore[arg-type]


def policy(name: str, scope: PolicyScope, namespace: str = "demo", **kw: object) -> Authorization:
    match = Match(destination_ports=(9000,))
    fields: dict[str, object] = {
        "name": name,
        "namespace": namespace,
        "scope": scope,
        "action": Action.DENY,
        "rules": (((match,),),),
    }
    fields.update(kw)
    return Authorization(**fields)  # type: ignore[arg-type]


def test_lookups_by_uid_address_vip_and_key() -> None:
    state = ProxyState()
    a = workload("a", "10.0.0.1", services={WEB: {80: 8081}})
    b = workload("b", "10.0.0.1", network="net1")
    state.replace([a, b], [web()], [])
    assert state.workload_by_uid(a.uid) is a
    assert state.workload_by_ip(ip("10.0.0.1")) is a
    assert state.workload_by_ip(ip("10.0.0.1"), "net1") is b
    assert state.workload_by_ip(ip("10.0.0.2")) is None
    svc = state.service_by_vip(ip("10.96.0.1"))
    assert svc is not None and svc.key == WEB
    assert state.service_by_vip(ip("10.96.0.1"), "net1") is None
    assert state.service_by_key(WEB) is svc


def test_endpoint_target_ports_per_workload_first_then_service() -> None:
    state = ProxyState()
    named = workload("a", "10.0.0.1", services={WEB: {80: 8081, 90: 9090}})
    plain = workload("b", "10.0.0.2", services={WEB: {}})
    state.replace([named, plain, workload("other", "10.0.0.3")], [web()], [])
    svc = web()
    assert sorted((w.name, p) for w, p in state.endpoints(svc, 80)) == [("a", 8081), ("b", 8080)]
    # port 90 has a named (0) target in the service: only the workload that maps it serves it
    assert [(w.name, p) for w, p in state.endpoints(svc, 90)] == [("a", 9090)]
    assert state.endpoints(svc, 443) == []


def test_endpoints_exist_before_their_service_arrives() -> None:
    state = ProxyState()
    state.apply_delta(workloads=[workload("a", "10.0.0.1", services={WEB: {}})])
    assert state.service_by_key(WEB) is None
    state.apply_delta(services=[web()])
    svc = state.service_by_key(WEB)
    assert svc is not None
    assert [w.name for w, _ in state.endpoints(svc, 80)] == ["a"]


def test_select_endpoint_healthy_only_weighted_by_capacity() -> None:
    state = ProxyState()
    big = workload("big", "10.0.0.1", services={WEB: {}}, capacity=3)
    small = workload("small", "10.0.0.2", services={WEB: {}}, capacity=1)
    sick = workload("sick", "10.0.0.3", services={WEB: {}}, status=WorkloadStatus.UNHEALTHY)
    drained = workload("drained", "10.0.0.4", services={WEB: {}}, capacity=0)
    state.replace([big, small, sick, drained], [web()], [])
    rng = random.Random(7)
    picks: Counter[str] = Counter()
    for _ in range(4000):
        chosen = state.select_endpoint(web(), 80, rng)
        assert chosen is not None
        picks[chosen[0].name] += 1
        assert chosen[1] == 8080
    assert set(picks) == {"big", "small"}
    assert 2.6 < picks["big"] / picks["small"] < 3.4
    assert state.select_endpoint(web(), 443, rng) is None


def test_select_endpoint_none_when_all_unhealthy() -> None:
    state = ProxyState()
    sick = workload("sick", "10.0.0.3", services={WEB: {}}, status=WorkloadStatus.UNHEALTHY)
    state.replace([sick], [web()], [])
    assert state.select_endpoint(web(), 80, random.Random(1)) is None


def test_policies_for_namespace_global_and_selected() -> None:
    ns = policy("ns", PolicyScope.NAMESPACE)
    other_ns = policy("elsewhere", PolicyScope.NAMESPACE, namespace="other")
    glob = policy("strict", PolicyScope.GLOBAL, namespace="istio-system")
    selected = policy("sel", PolicyScope.WORKLOAD_SELECTOR)
    unselected = policy("unsel", PolicyScope.WORKLOAD_SELECTOR)
    a = workload("a", "10.0.0.1", authorization_policies=("demo/sel", "demo/missing"))
    state = ProxyState()
    state.replace([a], [], [ns, other_ns, glob, selected, unselected])
    assert sorted(p.key for p in state.policies_for(a)) == [
        "demo/ns",
        "demo/sel",
        "istio-system/strict",
    ]
    state.apply_delta(removed_policies=["demo/ns", "istio-system/strict"])
    assert [p.key for p in state.policies_for(a)] == ["demo/sel"]


def test_policy_scope_change_moves_it() -> None:
    state = ProxyState()
    a = workload("a", "10.0.0.1")
    state.apply_delta(policies=[policy("p", PolicyScope.NAMESPACE)])
    assert [p.key for p in state.policies_for(a)] == ["demo/p"]
    state.apply_delta(policies=[policy("p", PolicyScope.WORKLOAD_SELECTOR)])
    assert list(state.policies_for(a)) == []


def test_upstream_identities() -> None:
    a = workload("a", "10.0.0.1")
    sans = (
        "spiffe://cluster.local/ns/demo/sa/web",
        "not-a-spiffe-id",
        "spiffe://cluster.local/ns/demo/sa/a",
    )
    svc = web(subject_alt_names=sans)
    state = ProxyState()
    assert state.upstream_identities(a, None) == [Identity("cluster.local", "demo", "a")]
    assert state.upstream_identities(a, svc) == [
        Identity("cluster.local", "demo", "a"),
        Identity("cluster.local", "demo", "web"),
    ]


def test_delta_upsert_replaces_old_indexes() -> None:
    state = ProxyState()
    state.apply_delta(workloads=[workload("a", "10.0.0.1", services={WEB: {}})])
    state.apply_delta(workloads=[workload("a", "10.0.0.2")])
    assert state.workload_by_ip(ip("10.0.0.1")) is None
    assert state.workload_by_ip(ip("10.0.0.2")) is not None
    assert state.endpoints(web(), 80) == []
    state.apply_delta(services=[web()])
    state.apply_delta(services=[web(vips=(NetworkAddress.parse("/10.96.0.2"),))])
    assert state.service_by_vip(ip("10.96.0.1")) is None
    assert state.service_by_vip(ip("10.96.0.2")) is not None


def test_shared_address_survives_removal_of_one_owner() -> None:
    state = ProxyState()
    a = workload("a", "192.168.0.10")
    b = workload("b", "192.168.0.10")
    state.apply_delta(workloads=[a, b])
    assert state.workload_by_ip(ip("192.168.0.10")) is b
    state.apply_delta(removed_workloads=[b.uid])
    assert state.workload_by_ip(ip("192.168.0.10")) is a
    state.apply_delta(removed_workloads=[a.uid])
    assert state.workload_by_ip(ip("192.168.0.10")) is None


def test_removal_then_upsert_in_one_delta_keeps_it() -> None:
    state = ProxyState()
    a = workload("a", "10.0.0.1")
    state.apply_delta(workloads=[a])
    state.apply_delta(removed_workloads=[a.uid], workloads=[a])
    assert state.workload_by_uid(a.uid) is a


def test_change_notifications() -> None:
    state = ProxyState()
    seen: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("subscriber bug")

    state.subscribe(broken)
    unsubscribe = state.subscribe(seen.append)
    state.replace([], [], [])
    state.apply_delta(policies=[policy("p", PolicyScope.NAMESPACE)])
    state.apply_delta(removed_workloads=["nope"])  # nothing changed: no notification
    state.apply_delta(removed_policies=["demo/p"])
    unsubscribe()
    unsubscribe()
    state.apply_delta(workloads=[workload("a", "10.0.0.1")])
    assert seen == [
        StateChange(1, True, True, True),
        StateChange(2, False, False, True),
        StateChange(3, False, False, True),
    ]
    assert state.version == 4


def test_dump_shape_matches_istioctl() -> None:
    a = workload(
        "a",
        "10.0.0.1",
        services={WEB: {80: 8081}},
        tunnel_protocol=TunnelProtocol.HBONE,
        canonical_name="app",
        canonical_revision="v1",
        workload_name="a-deploy",
        node="node1",
        network="net1",
        authorization_policies=("demo/sel",),
        waypoint=GatewayAddress(NetworkAddress.parse("/10.96.0.9"), 15008),
    )
    svc = web(subject_alt_names=("spiffe://cluster.local/ns/demo/sa/web",))
    match = Match(
        principals=(StringMatch(StringMatchKind.PRESENCE),),
        not_namespaces=(StringMatch(StringMatchKind.EXACT, "kube-system"),),
        source_ips=(ipaddress.ip_network("10.0.0.0/8"),),
        destination_ports=(80,),
    )
    pol = policy("sel", PolicyScope.WORKLOAD_SELECTOR, rules=(((match,),),), dry_run=True)
    state = ProxyState()
    state.replace([a], [svc], [pol])
    dump = json.loads(json.dumps(state.dump()))
    (w,) = dump["workloads"]
    assert w == {
        "uid": a.uid,
        "workloadIps": ["10.0.0.1"],
        "protocol": "HBONE",
        "name": "a",
        "namespace": "demo",
        "serviceAccount": "a",
        "trustDomain": "cluster.local",
        "workloadName": "a-deploy",
        "workloadType": "deployment",
        "canonicalName": "app",
        "canonicalRevision": "v1",
        "node": "node1",
        "network": "net1",
        "status": "Healthy",
        "clusterId": "Kubernetes",
        "authorizationPolicies": ["demo/sel"],
        "services": [WEB],
        "capacity": 1,
        "networkMode": "Standard",
        "waypoint": {"destination": "/10.96.0.9", "hboneMtlsPort": 15008},
    }
    (s,) = dump["services"]
    assert s == {
        "name": "web",
        "namespace": "demo",
        "hostname": "web.demo.svc.cluster.local",
        "vips": ["/10.96.0.1"],
        "ports": {"80": 8080, "90": 0},
        "endpoints": {
            a.uid: {
                "workloadUid": a.uid,
                "service": WEB,
                "port": {"80": 8081},
                "status": "Healthy",
                "address": "net1/10.0.0.1",
            }
        },
        "subjectAltNames": ["spiffe://cluster.local/ns/demo/sa/web"],
        "canonical": False,
    }
    (p,) = dump["policies"]
    assert p == {
        "name": "sel",
        "namespace": "demo",
        "scope": "WorkloadSelector",
        "action": "Deny",
        "dryRun": True,
        "rules": [
            [
                [
                    {
                        "principals": [{"Presence": []}],
                        "notNamespaces": [{"Exact": "kube-system"}],
                        "sourceIps": ["10.0.0.0/8"],
                        "destinationPorts": [80],
                    }
                ]
            ]
        ],
    }


GOOD = """
workloads:
- {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}
"""


def test_reload_keeps_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "local.yaml"
    path.write_text(GOOD)
    state = ProxyState()
    config = state.reload_local_config(path)
    assert [w.name for w in config.workloads] == ["a"]
    version = state.version
    path.write_text(GOOD.replace("10.0.0.1", "10.0.0.999"))
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.999' is not an IP address"):
        state.reload_local_config(path)
    assert state.version == version
    assert state.workload_by_ip(ip("10.0.0.1")) is not None
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read the file"):
        state.reload_local_config(path)
    assert state.workload_by_ip(ip("10.0.0.1")) is not None


def test_a_host_network_pod_is_an_endpoint_but_never_found_by_its_ip() -> None:
    """A host-network pod's IP is its node's: ztunnel does not index it by address (the node
    and every other such pod share it), but a service still reaches it as an endpoint."""
    node_ip = "192.168.0.10"
    host = workload(
        "host", node_ip, services={WEB: {80: 8080}}, network_mode=NetworkMode.HOST_NETWORK
    )
    state = ProxyState()
    state.replace([host], [web()], [])
    assert state.workload_by_ip(ip(node_ip)) is None
    assert state.select_endpoint(web(), 80, random.Random(1)) == (host, 8080)
    state.apply_delta(removed_workloads=[host.uid])
    assert state.endpoints(web(), 80) == []


def test_range_vips_reach_their_service_narrowest_first() -> None:
    wide = web(
        name="wide",
        hostname="wide.example",
        vips=(),
        cidr_vips=(NetworkCidr("", ipaddress.ip_network("10.20.0.0/16")),),
    )
    narrow = web(
        name="narrow",
        hostname="narrow.example",
        vips=(),
        cidr_vips=(NetworkCidr("", ipaddress.ip_network("10.20.30.0/24")),),
    )
    state = ProxyState()
    state.replace([], [wide, narrow, web()], [])
    assert state.service_by_vip(ip("10.20.30.4")) == narrow
    assert state.service_by_vip(ip("10.20.1.1")) == wide
    assert state.service_by_vip(ip("10.96.0.1")) == web()
    assert state.service_by_vip(ip("10.20.30.4"), network="other") is None
    assert state.service_by_vip(ip("10.21.0.1")) is None
    state.apply_delta(removed_services=[narrow.key])
    assert state.service_by_vip(ip("10.20.30.4")) == wide


def test_a_health_policy_of_allow_all_selects_unhealthy_endpoints() -> None:
    sick = workload("sick", "10.0.0.3", services={WEB: {80: 8080}}, status=WorkloadStatus.UNHEALTHY)
    state = ProxyState()
    state.replace([sick], [web()], [])
    assert state.select_endpoint(web(), 80, random.Random(1)) is None
    lenient = web(load_balancer=LoadBalancer(health_policy=HealthPolicy.ALLOW_ALL))
    assert state.select_endpoint(lenient, 80, random.Random(1)) == (sick, 8080)
