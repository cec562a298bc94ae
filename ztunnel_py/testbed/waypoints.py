"""The testbed's gateway controller, decided without I/O: the waypoint pod (and its Service) for a
Gateway of class `istio-waypoint`, as istiod's deployment controller has Kubernetes create them.

A Gateway API Gateway (`gateway.networking.k8s.io`) of class `istio-waypoint` gets one pod:

- name `<gateway>-<5 hex digits>` (a hash of namespace and gateway: stable, and distinct across
  namespaces; a Deployment's pods carry a suffix too), in the Gateway's namespace (`default`
  when it names none), service account = the gateway name (istiod's default), so its identity
  is `spiffe://cluster.local/ns/<namespace>/sa/<gateway>`;
- on the node with the fewest waypoints (node1 first), in network namespace
  `<prefix>pod-<pod name>`, wired like every other pod; its IP is the first free
  `10.244.<i>.200`-`.239` of that node (planned pods use .10-.109 and .250; its twin
  `fd00:10:244:<i>::<same>` in dual stack); the node side of its veth is `vwp<host>`;
- its Service `<gateway>` gets the first free VIP of 10.96.0.200-.239 (`fd00:10:96::<same>`),
  skipping the planned services' and every address already in the watched directory.

The resources carry the labels istiod's deployment controller sets: the Gateway's own labels
(or `spec.infrastructure.labels`), minus `gateway.networking.k8s.io/` keys, on both; the Pod
adds `istio.io/dataplane-mode: none` (no agent captures it: it speaks HBONE itself),
`sidecar.istio.io/inject: "false"`, `service.istio.io/canonical-name`/`-revision`,
`gateway.networking.k8s.io/gateway-name`, `gateway.networking.k8s.io/gateway-class-name` and
`gateway.istio.io/managed: istio.io-mesh-controller`; the Service (type ClusterIP, PreferDualStack)
selects the pod by gateway name, with the ports `status-port` 15021 (appProtocol tcp) and one
per distinct listener port, named after the listener, appProtocol its lower-cased protocol (the
canonical waypoint's `mesh` 15008, appProtocol hbone).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ztunnel_py.model.ports import METRICS_PORT, READINESS_PORT
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.topology import CLUSTER_DOMAIN, NodePlan, Topology

Document = dict[str, Any]

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
WAYPOINT_CLASS = "istio-waypoint"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
MESH_CONTROLLER = "istio.io-mesh-controller"
DEFAULT_NAMESPACE = "default"
STATUS_PORT_NAME = "status-port"

# Host parts of the addresses waypoints take: pods 10.244.<node>.<h>, VIPs 10.96.0.<h>.
WAYPOINT_HOSTS = range(200, 240)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class WaypointPlan:
    """One waypoint pod: who it is, where it runs, its addresses (kept in the state file)."""

    gateway: str
    namespace: str
    name: str  # the pod's
    node: str
    netns: str
    ip: str
    host_iface: str
    vip: str
    ipv6: str | None = None
    vip6: str | None = None

    @property
    def service_account(self) -> str:
        return self.gateway

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip,) if self.ipv6 is None else (self.ip, self.ipv6)

    @property
    def vips(self) -> tuple[str, ...]:
        return (self.vip,) if self.vip6 is None else (self.vip, self.vip6)

    @property
    def hostname(self) -> str:
        """The Service's name in the cluster's DNS, as GatewayAddresses name the waypoint."""
        return f"{self.gateway}.{self.namespace}.{CLUSTER_DOMAIN}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WaypointPlan:
        def optional(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            gateway=str(data["gateway"]),
            namespace=str(data["namespace"]),
            name=str(data["name"]),
            node=str(data["node"]),
            netns=str(data["netns"]),
            ip=str(data["ip"]),
            host_iface=str(data["host_iface"]),
            vip=str(data["vip"]),
            ipv6=optional("ipv6"),
            vip6=optional("vip6"),
        )


def is_gateway(document: Mapping[str, Any]) -> bool:
    """A Gateway API Gateway (not Istio's networking Gateway, which shares the kind)."""
    api_version = document.get("apiVersion")
    return (
        document.get("kind") == "Gateway"
        and isinstance(api_version, str)
        and api_version.split("/", 1)[0] == GATEWAY_API_GROUP
    )


def is_waypoint(document: Mapping[str, Any]) -> bool:
    spec = document.get("spec")
    return (
        is_gateway(document)
        and isinstance(spec, Mapping)
        and spec.get("gatewayClassName") == WAYPOINT_CLASS
    )


def gateway_key(document: Mapping[str, Any], origin: str) -> tuple[str, str]:
    """(namespace, name) of a Gateway; TestbedError if either cannot name a pod."""
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace") or DEFAULT_NAMESPACE
    for what, value in (("metadata.name", name), ("metadata.namespace", namespace)):
        if not isinstance(value, str) or not _DNS_LABEL.match(value):
            raise TestbedError(
                f"{origin}: Gateway {what} {value!r} cannot name a waypoint pod: it must be a DNS "
                "label (at most 63 characters from a-z, 0-9 and '-', starting and ending with a "
                "letter or digit)"
            )
    assert isinstance(name, str) and isinstance(namespace, str)
    return namespace, name


def pod_name(namespace: str, gateway: str) -> str:
    return f"{gateway}-{hashlib.sha256(f'{namespace}/{gateway}'.encode()).hexdigest()[:5]}"


def plan_waypoint(
    topology: Topology,
    namespace: str,
    gateway: str,
    existing: Sequence[WaypointPlan],
    taken: Collection[str],
) -> WaypointPlan:
    """Place the waypoint pod of Gateway `namespace/gateway` next to the `existing` ones;
    `taken` are addresses in use elsewhere (pod IPs and VIPs of the watched directory).
    TestbedError when the node or the VIP range has no free address left."""
    load = {n.name: 0 for n in topology.nodes}
    for wp in existing:
        load[wp.node] = load.get(wp.node, 0) + 1
    node = min(topology.nodes, key=lambda n: (load[n.name], n.index))
    used = {
        *taken,
        *(ip for p in topology.pods for ip in p.ips),
        *(ip for wp in existing for ip in (*wp.ips, *wp.vips)),
        *(vip for s in topology.services for vip in s.vips),
    }
    host = _free_host(used, lambda h: f"10.244.{node.index}.{h}", f"node {node.name}'s pod")
    vip_host = _free_host(used, lambda h: f"10.96.0.{h}", "the service VIP")
    name = pod_name(namespace, gateway)
    return WaypointPlan(
        gateway=gateway,
        namespace=namespace,
        name=name,
        node=node.name,
        netns=f"{topology.prefix}pod-{name}",
        ip=f"10.244.{node.index}.{host}",
        host_iface=f"vwp{host}",
        vip=f"10.96.0.{vip_host}",
        ipv6=_ipv6_twin(node, host),
        vip6=f"fd00:10:96::{vip_host}" if topology.dual_stack else None,
    )


def _free_host(used: Collection[str], address: Callable[[int], str], what: str) -> int:
    for host in WAYPOINT_HOSTS:
        if address(host) not in used:
            return host
    first, last = address(WAYPOINT_HOSTS[0]), address(WAYPOINT_HOSTS[-1])
    raise TestbedError(
        f"no free waypoint address in {what} range {first}-{last}: delete a waypoint Gateway first"
    )


def _ipv6_twin(node: NodePlan, host: int) -> str | None:
    return f"fd00:10:244:{node.index}::{host}" if node.ipv6 else None


def _infra_labels(gateway: Mapping[str, Any]) -> dict[str, str]:
    """What istiod copies onto the resources it creates: `spec.infrastructure.labels`, else the
    Gateway's labels, without the Gateway API's own keys."""
    spec = gateway.get("spec") or {}
    infrastructure = spec.get("infrastructure") if isinstance(spec, Mapping) else None
    labels = infrastructure.get("labels") if isinstance(infrastructure, Mapping) else None
    if not isinstance(labels, Mapping):
        metadata = gateway.get("metadata") or {}
        labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return {
        str(k): str(v)
        for k, v in (labels or {}).items()
        if not str(k).startswith(f"{GATEWAY_API_GROUP}/")
    }


def _owned_labels(wp: WaypointPlan, gateway: Mapping[str, Any]) -> dict[str, str]:
    return {
        **_infra_labels(gateway),
        GATEWAY_NAME_LABEL: wp.gateway,
        GATEWAY_CLASS_LABEL: WAYPOINT_CLASS,
        MANAGED_LABEL: MESH_CONTROLLER,
    }


def pod_resource(wp: WaypointPlan, gateway: Mapping[str, Any]) -> Document:
    """The waypoint's Pod as the API server would report it once running."""
    labels = {
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": wp.gateway,
        "service.istio.io/canonical-revision": "latest",
        **_owned_labels(wp, gateway),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": wp.name, "namespace": wp.namespace, "labels": labels},
        "spec": {
            "serviceAccountName": wp.service_account,
            "nodeName": wp.node,
            "containers": [
                {
                    "name": "istio-proxy",
                    "image": "ztunnel-py/waypoint",
                    "ports": [
                        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        {
                            "name": STATUS_PORT_NAME,
                            "containerPort": READINESS_PORT,
                            "protocol": "TCP",
                        },
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIP": wp.ip,
            "podIPs": [{"ip": ip} for ip in wp.ips],
        },
    }


def service_ports(gateway: Mapping[str, Any]) -> list[Document]:
    """The status port, then one port per distinct listener port (istiod's extractServicePorts)."""
    ports: list[Document] = [
        {"name": STATUS_PORT_NAME, "port": READINESS_PORT, "appProtocol": "tcp", "protocol": "TCP"}
    ]
    spec = gateway.get("spec") or {}
    listeners = spec.get("listeners") if isinstance(spec, Mapping) else None
    seen: set[int] = set()
    for index, listener in enumerate(listeners if isinstance(listeners, list) else ()):
        if not isinstance(listener, Mapping):
            continue
        port, protocol = listener.get("port"), str(listener.get("protocol", "")).lower()
        if not isinstance(port, int) or isinstance(port, bool) or port in seen:
            continue
        seen.add(port)
        name = listener.get("name") or f"{protocol}-{index}"
        ports.append({"name": str(name), "port": port, "appProtocol": protocol, "protocol": "TCP"})
    return ports


def service_resource(wp: WaypointPlan, gateway: Mapping[str, Any]) -> Document:
    """The waypoint's Service: named like the Gateway, selecting its pod."""
    spec: Document = {
        "type": "ClusterIP",
        "selector": {GATEWAY_NAME_LABEL: wp.gateway},
        "ports": service_ports(gateway),
        "clusterIP": wp.vip,
        "clusterIPs": list(wp.vips),
        "ipFamilyPolicy": "PreferDualStack",
    }
    if wp.vip6 is not None:
        spec["ipFamilies"] = ["IPv4", "IPv6"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": wp.gateway,
            "namespace": wp.namespace,
            "labels": _owned_labels(wp, gateway),
        },
        "spec": spec,
    }
