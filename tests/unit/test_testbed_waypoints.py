"""The testbed's gateway controller without I/O: where waypoint pods go, which addresses they
take, and the Pod and Service it writes, as the control plane reads them."""

from __future__ import annotations

import io
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.cp_support import translate_directory
from ztunnel_py.controlplane.translate import MeshOptions
from ztunnel_py.controlplane.validate_cli import validate_directory
from ztunnel_py.model import Identity
from ztunnel_py.testbed import resources, waypoints
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import plan
from ztunnel_py.testbed.waypoints import WaypointPlan, plan_waypoint

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def gateway(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(GATEWAY)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = document
        for key in parents:
            target = target[key]
        target[leaf] = value
    return document


def test_waypoints_spread_over_nodes_in_their_own_address_range() -> None:
    t = plan("zt-", nodes=2, pods_per_node=100)
    first = plan_waypoint(t, "apps", "waypoint", [], set())
    assert first == WaypointPlan(
        gateway="waypoint",
        namespace="apps",
        name=waypoints.pod_name("apps", "waypoint"),
        node="node1",
        netns=f"zt-pod-{first.name}",
        ip="10.244.1.200",
        host_iface="vwp200",
        vip="10.96.0.200",
    )
    assert first.name.startswith("waypoint-") and len(first.name) == len("waypoint-") + 5
    assert (first.service_account, first.hostname) == (
        "waypoint",
        "waypoint.apps.svc.cluster.local",
    )
    # the same gateway in another namespace is another pod; the least loaded node takes it
    second = plan_waypoint(t, "db", "waypoint", [first], set())
    assert second.name != first.name and second.netns != first.netns
    assert (second.node, second.ip, second.vip) == ("node2", "10.244.2.200", "10.96.0.201")
    third = plan_waypoint(t, "clients", "wp", [first, second], set())
    assert (third.node, third.ip, third.host_iface) == ("node1", "10.244.1.201", "vwp201")
    # never a planned pod's address (100 pods per node use .10-.109, legacy-1 .250), never a VIP
    planned = {ip for p in t.pods for ip in p.ips} | {v for s in t.services for v in s.vips}
    assert not planned & {ip for wp in (first, second, third) for ip in (*wp.ips, *wp.vips)}
    assert max(len(wp.host_iface) for wp in (first, second, third)) <= 15


def test_addresses_already_in_the_watched_directory_are_skipped(tmp_path: Path) -> None:
    t = plan("zt-", nodes=1, pods_per_node=2, dual_stack=True)
    resources.write(tmp_path, resources.topology_resources(t))
    user = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: taken, namespace: apps}\n"
        "spec: {clusterIPs: [10.96.0.200], ports: [{port: 80}]}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost, namespace: apps}\n"
        "spec: {containers: [{name: c, image: i}]}\n"
        "status: {podIP: 10.244.1.200, podIPs: [{ip: 10.244.1.200}]}\n"
    )
    resources.write(tmp_path, [d for _, d in resources.parse(user, "user.yaml")])
    (tmp_path / "broken.yaml").write_text("kind: Service\nspec: [\n")
    taken = resources.addresses_in_use(tmp_path)
    assert {"10.96.0.10", "fd00:10:96::10", "10.244.1.10", "10.96.0.200", "10.244.1.200"} <= taken
    wp = plan_waypoint(t, "apps", "waypoint", [], taken)
    assert (wp.ips, wp.vips) == (
        ("10.244.1.201", "fd00:10:244:1::201"),
        ("10.96.0.201", "fd00:10:96::201"),
    )


def test_a_full_range_is_a_clear_error() -> None:
    t = plan("zt-", nodes=1, pods_per_node=2)
    taken = {f"10.96.0.{h}" for h in waypoints.WAYPOINT_HOSTS}
    expected = (
        r"no free waypoint address in the service VIP range 10\.96\.0\.200-10\.96\.0\.239: "
        "delete a waypoint Gateway first"
    )
    with pytest.raises(TestbedError, match=expected):
        plan_waypoint(t, "apps", "waypoint", [], taken)


def test_which_documents_are_waypoints() -> None:
    assert waypoints.is_waypoint(gateway())
    assert waypoints.is_gateway(gateway(spec__gatewayClassName="istio")) and not (
        waypoints.is_waypoint(gateway(spec__gatewayClassName="istio"))
    )
    # Istio's networking Gateway shares the kind, and is not one
    assert not waypoints.is_gateway(gateway(apiVersion="networking.istio.io/v1"))
    assert waypoints.gateway_key(gateway(), "f.yaml") == ("apps", "waypoint")
    unnamespaced = gateway()
    del unnamespaced["metadata"]["namespace"]
    assert waypoints.gateway_key(unnamespaced, "f.yaml") == ("default", "waypoint")
    expected = r"f\.yaml: Gateway metadata\.name 'Way_Point' cannot name a waypoint pod: .* DNS"
    with pytest.raises(TestbedError, match=expected):
        waypoints.gateway_key(gateway(metadata__name="Way_Point"), "f.yaml")


def test_pod_and_service_carry_what_istiods_deployment_controller_sets() -> None:
    t = plan("zt-", nodes=2, pods_per_node=2, dual_stack=True)
    wp = plan_waypoint(t, "apps", "waypoint", [], set())
    owned = {
        "istio.io/waypoint-for": "service",
        "gateway.networking.k8s.io/gateway-name": "waypoint",
        "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
        "gateway.istio.io/managed": "istio.io-mesh-controller",
    }
    pod = waypoints.pod_resource(wp, gateway())
    assert pod["metadata"] == {
        "name": wp.name,
        "namespace": "apps",
        "labels": {
            "sidecar.istio.io/inject": "false",
            "istio.io/dataplane-mode": "none",
            "service.istio.io/canonical-name": "waypoint",
            "service.istio.io/canonical-revision": "latest",
            **owned,
        },
    }
    assert (pod["spec"]["serviceAccountName"], pod["spec"]["nodeName"]) == ("waypoint", "node1")
    assert pod["status"]["podIPs"] == [{"ip": "10.244.1.200"}, {"ip": "fd00:10:244:1::200"}]
    service = waypoints.service_resource(wp, gateway())
    assert service["metadata"] == {"name": "waypoint", "namespace": "apps", "labels": owned}
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
        "ports": [
            {"name": "status-port", "port": 15021, "appProtocol": "tcp", "protocol": "TCP"},
            {"name": "mesh", "port": 15008, "appProtocol": "hbone", "protocol": "TCP"},
        ],
        "clusterIP": "10.96.0.200",
        "clusterIPs": ["10.96.0.200", "fd00:10:96::200"],
        "ipFamilyPolicy": "PreferDualStack",
        "ipFamilies": ["IPv4", "IPv6"],
    }


def test_infrastructure_labels_win_and_gateway_api_keys_are_not_copied() -> None:
    t = plan()
    wp = plan_waypoint(t, "apps", "waypoint", [], set())
    document = gateway(metadata__labels={"team": "a", "gateway.networking.k8s.io/x": "y"})
    labels = waypoints.service_resource(wp, document)["metadata"]["labels"]
    assert labels["team"] == "a" and "gateway.networking.k8s.io/x" not in labels
    document["spec"]["infrastructure"] = {"labels": {"cost-center": "7"}}
    labels = waypoints.pod_resource(wp, document)["metadata"]["labels"]
    assert labels["cost-center"] == "7" and "team" not in labels
    # listeners: one port each, duplicates once, unnamed ones named after protocol and index
    document["spec"]["listeners"] += [
        {"name": "again", "port": 15008, "protocol": "HBONE"},
        {"port": 8080, "protocol": "HTTP"},
    ]
    ports = waypoints.service_resource(wp, document)["spec"]["ports"]
    assert [(p["name"], p["port"], p["appProtocol"]) for p in ports] == [
        ("status-port", 15021, "tcp"),
        ("mesh", 15008, "hbone"),
        ("http-2", 8080, "http"),
    ]


def test_the_control_plane_reads_the_waypoint_pod_and_service(tmp_path: Path) -> None:
    t = plan("zt-", nodes=2, pods_per_node=2)
    wp = plan_waypoint(t, "apps", "waypoint", [], set())
    document = gateway()
    resources.write(tmp_path, resources.topology_resources(t))
    resources.write(
        tmp_path,
        [document, waypoints.pod_resource(wp, document), waypoints.service_resource(wp, document)],
    )
    out, err = io.StringIO(), io.StringIO()
    assert validate_directory(tmp_path, MeshOptions(), out, err) == 0, out.getvalue()
    assert out.getvalue() == ""
    workloads, services = translate_directory(tmp_path)
    workload = workloads[f"Kubernetes//Pod/apps/{wp.name}"]
    assert workload.identity == Identity("cluster.local", "apps", "waypoint")
    assert (workload.node, workload.addresses) == ("node1", (ipaddress.ip_address(wp.ip),))
    svc = services["apps/waypoint.apps.svc.cluster.local"]
    assert [str(v.address) for v in svc.vips] == [wp.vip]
    assert svc.ports == {15021: 15021, 15008: 15008}
    assert workload.services == {svc.key: {15021: 15021, 15008: 15008}}


def test_waypoints_survive_in_the_state_file(tmp_path: Path) -> None:
    t = plan("zt-", nodes=2, pods_per_node=2, dual_stack=True)
    state = State.create(tmp_path / "state", "zt-", 2, 2, "ambient", dual_stack=True)
    wp = plan_waypoint(t, "apps", "waypoint", [], set())
    state.add_waypoint(wp)
    loaded = State.load(tmp_path / "state")
    assert loaded is not None and loaded.waypoints == [wp]
    assert loaded.waypoint("apps", "waypoint") == wp and loaded.waypoint("db", "waypoint") is None
    loaded.remove_waypoint(wp)
    assert State.load(tmp_path / "state").waypoints == []  # type: ignore[union-attr]


def test_applying_an_unchanged_object_leaves_its_file_alone(tmp_path: Path) -> None:
    [ref] = resources.write(tmp_path, [gateway()])
    path = tmp_path / ref.file_name
    before = path.stat()
    resources.write(tmp_path, [gateway()])
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    resources.write(tmp_path, [gateway(metadata__labels={"istio.io/waypoint-for": "all"})])
    assert path.stat().st_ino != before.st_ino
    assert "waypoint-for: all" in path.read_text()


def test_a_testbed_without_the_mesh_refuses_a_waypoint_before_writing_anything(
    tmp_path: Path,
) -> None:
    state = State.create(tmp_path / "state", "zt-", 1, 2, "none")
    bed = Testbed(state)
    with pytest.raises(TestbedError, match="runs without the mesh: a waypoint needs the control"):
        bed.apply(GATEWAY)
    assert not bed.config_dir.exists() or list(bed.config_dir.iterdir()) == []
    # a Gateway of another class is only written
    lines: list[str] = []
    other = GATEWAY.replace("istio-waypoint", "istio")
    assert [str(r) for r in bed.apply(other, progress=lines.append)] == ["Gateway apps/waypoint"]
    assert lines == [
        # the control plane's validation, run before writing, says what it makes of it
        "warning: Gateway apps/waypoint: spec.gatewayClassName: gateway class 'istio' is stored "
        "but not used: only 'istio-waypoint' gateways (waypoints) are part of this mesh",
        f"Gateway apps/waypoint written to {bed.config_dir}/gateway_apps_waypoint.yaml",
    ]
    assert State.load(state.state_dir).waypoints == []  # type: ignore[union-attr]
