"""What `Testbed.status()` reports: the testbed described as typed values.

The same values are `ztunnel-py testbed status --json` (`TestbedStatus.to_json`), whose shape
scripts and people depend on: the fields below are in the order of the JSON keys, tuples become
lists, and an absent value (a process never started, a node without IPv6) is null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    name: str
    pid: int | None
    alive: bool
    log: str | None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    netns: str
    ip: str
    pod_cidr: str
    ipv6: str | None
    pod_cidr6: str | None
    log: str | None  # the agent's
    agent: ProcessStatus
    enroll_socket: str | None  # ambient mode only


@dataclass(frozen=True, slots=True)
class PodStatus:
    name: str
    namespace: str
    node: str
    netns: str
    ip: str
    ipv6: str | None
    ips: tuple[str, ...]
    # in a mesh namespace: the CNI plugin enrolls it in ambient mode, it gets a sidecar in
    # sidecar mode
    ambient: bool
    enrolled: bool
    sidecar: ProcessStatus | None
    service_account: str
    app: str
    version: str | None  # its `version` label (the echo pods')
    role: str
    uid: str
    http_port: int
    iperf_port: int
    h2_port: int | None  # where its servers speak h2c and gRPC (echo's endpoints)
    grpc_port: int | None
    host_iface: str
    services: tuple[str, ...]
    processes: tuple[ProcessStatus, ProcessStatus]  # the HTTP server, the iperf3 server


@dataclass(frozen=True, slots=True)
class ServicePortStatus:
    port: int
    target_port: int
    name: str
    app_protocol: str | None  # None: istiod reads the protocol from the name


@dataclass(frozen=True, slots=True)
class WaypointStatus:
    """A waypoint pod the testbed runs for a Gateway of class istio-waypoint."""

    gateway: str
    namespace: str
    pod: str
    node: str
    netns: str
    ip: str
    ips: tuple[str, ...]
    service_account: str
    hostname: str  # of its Service, as services bound to it name it
    vip: str
    vips: tuple[str, ...]
    host_iface: str
    log: str | None
    process: ProcessStatus


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    namespace: str
    hostname: str
    vip: str
    vips: tuple[str, ...]
    ports: tuple[ServicePortStatus, ...]
    endpoints: tuple[str, ...]  # pod names


@dataclass(frozen=True, slots=True)
class FabricStatus:
    netns: str
    bridge: str
    subnet: str


@dataclass(frozen=True, slots=True)
class ControlPlaneStatus:
    netns: str
    ip: str
    address: str
    monitoring: str
    debug_config: str
    log: str | None
    pid: int | None
    alive: bool
    root_cert: str | None  # with a mesh only


@dataclass(frozen=True, slots=True)
class PrometheusStatus:
    """The testbed's Prometheus (`testbed up --prometheus`), reached inside `netns`."""

    netns: str
    url: str
    config: str
    targets_dir: str
    log: str | None
    pid: int | None
    alive: bool


@dataclass(frozen=True, slots=True)
class NamespaceStatus:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class TestbedStatus:
    # pytest collects classes named Test*; this is not a test class.
    __test__ = False

    prefix: str
    state_dir: str
    complete: bool
    mesh: bool
    mode: str
    dual_stack: bool
    config_dir: str
    fabric: FabricStatus
    controlplane: ControlPlaneStatus
    namespaces: tuple[NamespaceStatus, ...]
    nodes: tuple[NodeStatus, ...]
    pods: tuple[PodStatus, ...]
    services: tuple[ServiceStatus, ...]
    waypoints: tuple[WaypointStatus, ...]
    prometheus: PrometheusStatus | None  # with --prometheus only
    processes: tuple[ProcessStatus, ...]

    def pod(self, name: str) -> PodStatus:
        """The pod named `name`; KeyError if there is none."""
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(name)

    def waypoint(self, gateway: str, namespace: str) -> WaypointStatus:
        """The waypoint of Gateway `namespace/gateway`; KeyError if there is none."""
        for waypoint in self.waypoints:
            if (waypoint.gateway, waypoint.namespace) == (gateway, namespace):
                return waypoint
        raise KeyError(f"{namespace}/{gateway}")

    def node(self, name: str) -> NodeStatus:
        """The node named `name`; KeyError if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The `testbed status --json` object."""
        return dataclasses.asdict(self)
