"""The testbed as a Python object: bring it up, describe it, run commands in pods, tear it down.

`Testbed.up(...)` builds the topology of `topology.py` (namespaces, veths, routes), starts every
pod's servers and then, by mode: `ambient` (the default) starts the control plane and agents
(`mesh.py`) and enrolls the pods through the CNI plugin (`runtime.py`); `sidecar` starts the
control plane and gives every pod of the mesh iptables rules and its own proxy (`sidecar.py`);
`none` starts no mesh at all. Every step is recorded in the state file first, so
`down` (the method, or the module function when only the prefix is known) removes everything
even after `up` or any process was killed. `stop_agent`, `start_agent` and `kill_agent` act on
one node's agent, `stop_controlplane` and `start_controlplane` on the control plane, for
operators and fault tests; the state file follows every restart. `apply` and `delete` put
Kubernetes objects into (or take them out of) the directory the control plane watches; as
Kubernetes' deployment controller would for istiod, `apply` of a Gateway of class istio-waypoint
also starts its waypoint pod (`waypoints.py`: a network namespace wired like every pod's, its Pod
and Service, `ztunnel-py waypoint run` inside) and `delete` of it stops and removes that pod. The
Pod is written before the process starts (the CA signs only for identities scheduled on the
caller's node) and the Service once it is ready, because the Service is what binds services to
the waypoint: no traffic is sent to a waypoint that cannot serve it yet. Waypoints are in the
state file too (recorded before anything is created), so `status`, `down` and another CLI
process know them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ztunnel_py.telemetry import promql
from ztunnel_py.testbed import (
    clusterdns,
    image,
    mesh,
    namespaces,
    process,
    prometheus,
    resources,
    sidecar,
    waypoints,
)
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.namespaces import ip
from ztunnel_py.testbed.process import ProcessRecord
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.status import (
    ControlPlaneStatus,
    DnsStatus,
    FabricStatus,
    NamespaceStatus,
    NodeStatus,
    PodStatus,
    ProcessStatus,
    PrometheusStatus,
    ServicePortStatus,
    ServiceStatus,
    TestbedStatus,
    WaypointStatus,
)
from ztunnel_py.testbed.topology import (
    FABRIC_BRIDGE,
    FABRIC_SUBNET,
    FABRIC_SUBNET6,
    GRPC_PORT,
    H2_PORT,
    HTTP_PORT,
    IPERF_PORT,
    MODE_AMBIENT,
    MODE_NONE,
    MODE_SIDECAR,
    NodePlan,
    PodPlan,
    Topology,
    plan,
)
from ztunnel_py.testbed.waypoints import WaypointPlan

DEFAULT_STATE_ROOT = Path("/run/ztunnel-py/testbed")
FABRIC_PREFIX_LEN = FABRIC_SUBNET.split("/")[1]
FABRIC_PREFIX_LEN6 = FABRIC_SUBNET6.split("/")[1]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    """Progress sink that drops the lines (the Python API is silent unless asked)."""


def default_state_dir(prefix: str) -> Path:
    return DEFAULT_STATE_ROOT / prefix


def _state_dir(prefix: str, state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(state_dir) if state_dir is not None else default_state_dir(prefix)


def _serving(pid: int, ports: tuple[int, ...]) -> bool:
    """Every server of the pod listens (they share the namespace of `pid`)."""
    return set(ports) <= namespaces.listening_ports(pid)


class Wired(Protocol):
    """What wiring a pod's network namespace needs (a planned pod or a waypoint pod)."""

    @property
    def netns(self) -> str: ...
    @property
    def host_iface(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def ipv6(self) -> str | None: ...


def wire_pod(node: NodePlan, pod: Wired) -> None:
    """The pod's veth to its node, addresses and routes (the layout of `topology.py`)."""
    namespaces.add_veth("eth0", pod.netns, pod.host_iface, node.netns)
    ip("addr", "add", f"{node.gateway}/32", "dev", pod.host_iface, netns=node.netns)
    ip("link", "set", pod.host_iface, "up", netns=node.netns)
    ip("route", "add", f"{pod.ip}/32", "dev", pod.host_iface, netns=node.netns)
    ip("addr", "add", f"{pod.ip}/32", "dev", "eth0", netns=pod.netns)
    ip("link", "set", "eth0", "up", netns=pod.netns)
    ip("route", "add", node.gateway, "dev", "eth0", "scope", "link", netns=pod.netns)
    ip("route", "add", "default", "via", node.gateway, "dev", "eth0", netns=pod.netns)
    if pod.ipv6 is not None and node.gateway6 is not None:
        # The same layout in IPv6: the gateway /128 on every host veth, a /128 route per pod.
        host, gw = pod.host_iface, node.gateway6
        ip("-6", "addr", "add", f"{gw}/128", "dev", host, "nodad", netns=node.netns)
        ip("-6", "route", "add", f"{pod.ipv6}/128", "dev", host, netns=node.netns)
        ip("-6", "addr", "add", f"{pod.ipv6}/128", "dev", "eth0", "nodad", netns=pod.netns)
        ip("-6", "route", "add", gw, "dev", "eth0", netns=pod.netns)
        ip("-6", "route", "add", "default", "via", gw, "dev", "eth0", netns=pod.netns)


def http_name(pod: str) -> str:
    return f"{pod}/http"


def iperf_name(pod: str) -> str:
    return f"{pod}/iperf3"


class Testbed:
    """A testbed that is up (or was partly built); see the module docstring."""

    # pytest collects classes named Test*; this is not a test class.
    __test__ = False

    def __init__(self, state: State) -> None:
        self.state = state
        self.topology: Topology = plan(
            state.prefix,
            state.nodes,
            state.pods_per_node,
            state.dual_stack,
            state.mode,
            state.controlplane_ipv6,
        )

    @property
    def prefix(self) -> str:
        return self.state.prefix

    @property
    def state_dir(self) -> Path:
        return self.state.state_dir

    @classmethod
    def up(
        cls,
        prefix: str = "zt-",
        nodes: int = 2,
        pods_per_node: int = 2,
        mode: str = MODE_AMBIENT,
        state_dir: str | os.PathLike[str] | None = None,
        progress: Progress = _quiet,
        timeout: float = 60.0,
        secret_ttl: str = "24h",
        dual_stack: bool = False,
        controlplane_ipv6: bool = False,
        image_name: str | None = None,
        with_prometheus: bool | None = None,
    ) -> Testbed:
        """Build a testbed and wait until every process is ready.

        On any failure (or Ctrl-C) what was built is torn down again before the error propagates.
        `timeout` bounds each readiness wait. `dual_stack` gives pods, nodes and the control
        plane IPv6 addresses too; `controlplane_ipv6` (with `dual_stack`) has the control plane
        serve on its IPv6 address only, and the proxies reach it there. `image_name` runs the
        control plane, the agents, the CNI node pods and the waypoints from that local
        container image (`image.py`) instead of this virtual environment. `with_prometheus`
        also starts a Prometheus scraping the proxies and the control plane (`prometheus.py`);
        None (the default) runs it in ambient mode, where it costs 0.25 s at start and about
        45 MB.
        """
        topology = plan(prefix, nodes, pods_per_node, dual_stack, mode, controlplane_ipv6)
        if mode == MODE_SIDECAR and dual_stack:
            raise TestbedError("sidecar mode is IPv4 only: drop --dual-stack or use --mode ambient")
        if image_name is not None:
            if mode != MODE_AMBIENT:
                raise TestbedError("--image runs the ambient mesh: drop --mode or use ambient")
            image.check_image(image_name)
        if with_prometheus is None:
            with_prometheus = mode == MODE_AMBIENT
        if with_prometheus:
            if mode == MODE_NONE:
                raise TestbedError("--prometheus scrapes the mesh: drop --mode none / --no-mesh")
            prometheus.binary()
        directory = _state_dir(prefix, state_dir)
        if directory.exists():
            raise TestbedError(
                f"testbed {prefix} is already up (or was interrupted): {directory} exists; "
                f"run `ztunnel-py testbed down --prefix {prefix}` first"
            )
        wanted = [*topology.namespaces, *([prometheus.netns(prefix)] if with_prometheus else [])]
        taken = [ns for ns in wanted if namespaces.exists(ns)]
        if taken:
            raise TestbedError(
                f"network namespaces {', '.join(taken)} already exist, but {directory} does not "
                f"describe them; remove them with `ip netns delete NAME` or pick another --prefix"
            )
        state = State.create(
            directory,
            prefix,
            nodes,
            pods_per_node,
            mode,
            secret_ttl,
            dual_stack=dual_stack,
            namespace_labels=topology.namespace_labels,
            controlplane_ipv6=controlplane_ipv6,
            image=image_name,
            prometheus=with_prometheus,
        )
        bed = cls(state)
        try:
            bed._build(progress, timeout)
        except BaseException:
            progress(f"testbed {prefix}: up failed, removing what was built")
            bed.down(progress)
            raise
        return bed

    @classmethod
    def attach(
        cls, prefix: str = "zt-", state_dir: str | os.PathLike[str] | None = None
    ) -> Testbed:
        """The testbed recorded in the state dir; TestbedError if none is up."""
        directory = _state_dir(prefix, state_dir)
        state = State.load(directory)
        if state is None:
            raise TestbedError(
                f"no testbed {prefix} is up (no state in {directory}); "
                f"start one with `ztunnel-py testbed up --prefix {prefix}`"
            )
        return cls(state)

    # -- building ---------------------------------------------------------------------------

    def _launch(self, record: ProcessRecord) -> None:
        self.state.add_process(record)
        process.start(record)
        self.state.save()

    def _build(self, progress: Progress, timeout: float) -> None:
        t = self.topology
        mode = {
            MODE_AMBIENT: "ambient mode",
            MODE_SIDECAR: "sidecar mode",
            MODE_NONE: "without the mesh",
        }[self.state.mode]
        mode += ", dual stack" if t.dual_stack else ""
        mode += f", from image {self.state.image}" if self.state.image else ""
        progress(
            f"testbed {self.prefix}: {len(t.nodes)} nodes, {len(t.pods)} pods, {mode}; "
            f"state in {self.state_dir}"
        )
        own = [*t.namespaces, *self._prometheus_netns]
        for name in own:
            self.state.add_namespace(name)
        for name in own:
            self._add_netns(name)
        self._build_fabric(progress)
        for node in t.nodes:
            self._build_node(node, progress)
        resources.write(self.state.config_dir, resources.topology_resources(t))
        self._start_cluster_dns(progress, timeout)
        self._start_pod_servers(progress, timeout)
        if self.state.mode == MODE_AMBIENT:
            progress("starting the mesh: control plane, node agents, CNI")
            mesh.start(t, self.state, self._launch, progress, timeout)
        elif self.state.mode == MODE_SIDECAR:
            progress("starting the mesh: control plane, one sidecar per pod")
            sidecar.start(t, self.state, self._launch, progress, timeout)
        if self.state.prometheus:
            self._start_prometheus(progress, timeout)
        self.state.complete = True
        self.state.save()
        progress(f"testbed {self.prefix} is up")

    def launch(self, record: ProcessRecord) -> None:
        """Start a process of the caller's (a benchmark's stand-in for the mesh) in one of the
        testbed's namespaces, recorded in the state file so `down` stops it with the rest."""
        self._launch(record)

    def _add_netns(self, name: str) -> None:
        namespaces.add(name)
        ip("link", "set", "lo", "up", netns=name)
        if self.topology.dual_stack:
            # No duplicate address detection on the interfaces to come: while a node's
            # link-local addresses are tentative, the first IPv6 connections through it
            # stall for 2 s.
            for scope in ("all", "default"):
                namespaces.set_sysctl(name, f"net/ipv6/conf/{scope}/accept_dad", "0")

    def _fabric_port(
        self, member: str, fabric_iface: str, address: str, address6: str | None = None
    ) -> None:
        fabric = self.topology.fabric_netns
        namespaces.add_veth("eth0", member, fabric_iface, fabric)
        ip("link", "set", fabric_iface, "master", FABRIC_BRIDGE, "up", netns=fabric)
        ip("addr", "add", f"{address}/{FABRIC_PREFIX_LEN}", "dev", "eth0", netns=member)
        if address6 is not None:
            # nodad: the address is usable at once (DAD would hold it "tentative" for a second).
            ip(
                "addr",
                "add",
                f"{address6}/{FABRIC_PREFIX_LEN6}",
                "dev",
                "eth0",
                "nodad",
                netns=member,
            )
        ip("link", "set", "eth0", "up", netns=member)

    def _build_fabric(self, progress: Progress) -> None:
        t = self.topology
        ip("link", "add", FABRIC_BRIDGE, "type", "bridge", netns=t.fabric_netns)
        ip("link", "set", FABRIC_BRIDGE, "up", netns=t.fabric_netns)
        progress(f"  fabric {t.fabric_netns}: bridge {FABRIC_BRIDGE}, {FABRIC_SUBNET}")
        self._fabric_port(t.cp_netns, "vcp", *t.controlplane_ips)
        progress(f"  control plane namespace {t.cp_netns}: {', '.join(t.controlplane_ips)}")
        self._fabric_port(t.dns_netns, "vdns", *t.dns_ips)
        self._fabric_port(t.external_netns, "vext", *t.external_ips)
        progress(
            f"  cluster DNS {t.dns_netns}: {', '.join(t.dns_ips)}; external host "
            f"{t.external_netns}: {', '.join(t.external_ips)}"
        )
        for ns in self._prometheus_netns:
            ip6 = prometheus.IP6 if t.dual_stack else None
            self._fabric_port(ns, prometheus.FABRIC_IFACE, prometheus.IP, ip6)
            progress(f"  Prometheus namespace {ns}: {prometheus.IP}")

    @property
    def _prometheus_netns(self) -> list[str]:
        return [prometheus.netns(self.prefix)] if self.state.prometheus else []

    def _start_prometheus(self, progress: Progress, timeout: float) -> None:
        record = prometheus.record(self.topology, self.state)
        self._launch(record)
        prometheus.wait_ready(self.state, record, timeout)
        progress(
            f"  Prometheus ready on {prometheus.url()} in {prometheus.netns(self.prefix)}, "
            f"scraping every {prometheus.SCRAPE_INTERVAL} (pid {record.pid}, log {record.log})"
        )

    def _prometheus_targets_changed(self) -> None:
        if self.state.prometheus:
            prometheus.write_targets(self.topology, self.state, self.state.waypoints)

    def _build_node(self, node: NodePlan, progress: Progress) -> None:
        t = self.topology
        self._fabric_port(node.netns, node.fabric_iface, node.ip, node.ipv6)
        namespaces.set_sysctl(node.netns, "net/ipv4/ip_forward", "1")
        if node.ipv6 is not None:
            namespaces.set_sysctl(node.netns, "net/ipv6/conf/all/forwarding", "1")
        for other in t.nodes:
            if other is not node:
                ip("route", "add", other.pod_cidr, "via", other.ip, netns=node.netns)
                if other.pod_cidr6 is not None and other.ipv6 is not None:
                    ip("-6", "route", "add", other.pod_cidr6, "via", other.ipv6, netns=node.netns)
        # The control plane answers pods too (sidecars reach it from their pods' netns), and
        # so do the cluster DNS and the external host; Prometheus scrapes waypoints and sidecars
        # at their pod IPs.
        for ns in (t.cp_netns, *self._prometheus_netns):
            ip("route", "add", node.pod_cidr, "via", node.ip, netns=ns)
        for outside in (t.dns_netns, t.external_netns):
            ip("route", "add", node.pod_cidr, "via", node.ip, netns=outside)
            if node.pod_cidr6 is not None and node.ipv6 is not None:
                ip("-6", "route", "add", node.pod_cidr6, "via", node.ipv6, netns=outside)
        v6 = f", {node.ipv6}, pods in {node.pod_cidr6}" if node.ipv6 else ""
        progress(f"  node {node.name}: {node.netns} {node.ip}, pods in {node.pod_cidr}{v6}")
        for pod in t.pods_on(node.name):
            wire_pod(node, pod)
            clusterdns.write_resolv_conf(pod.netns, pod.namespace, t.dns_ips)
            progress(
                f"    pod {pod.name} ({pod.namespace}, sa {pod.service_account}): "
                + " ".join(pod.ips)
            )

    def _start_cluster_dns(self, progress: Progress, timeout: float) -> None:
        t = self.topology
        clusterdns.write_zones(t, self.state)
        records = [
            clusterdns.upstream_record(t, self.state),
            clusterdns.cluster_record(t, self.state),
            clusterdns.external_record(t, self.state, sys.executable),
        ]
        for record in records:
            self._launch(record)
        ports = (clusterdns.UPSTREAM_PORT, 53, clusterdns.EXTERNAL_PORT)
        for record, port in zip(records, ports, strict=True):
            assert record.pid is not None
            process.wait_for(
                functools.partial(_serving, record.pid, (port,)),
                [record],
                timeout,
                f"{record.name} to listen on {port}",
            )
        progress(
            f"  cluster DNS on {', '.join(t.dns_ips)} :53 (upstream zone "
            f"{clusterdns.UPSTREAM_ZONE}); external host {clusterdns.EXTERNAL_HOST} serves "
            f"http :{clusterdns.EXTERNAL_PORT}"
        )

    def _start_pod_servers(self, progress: Progress, timeout: float) -> None:
        started: list[tuple[PodPlan, ProcessRecord, ProcessRecord]] = []
        for pod in self.topology.pods:
            ports = self.topology.server_ports(pod)
            server = ProcessRecord(
                name=http_name(pod.name),
                netns=pod.netns,
                argv=[
                    sys.executable,
                    "-m",
                    "ztunnel_py.testbed.podserver",
                    "--pod",
                    pod.name,
                    "--namespace",
                    pod.namespace,
                    "--node",
                    pod.node,
                    "--port",
                    str(HTTP_PORT),
                    "--bind",
                    "::" if pod.ipv6 else "0.0.0.0",
                    "--version",
                    pod.version or "",
                    "--h2-port",
                    str(H2_PORT if H2_PORT in ports else 0),
                    "--grpc-port",
                    str(GRPC_PORT if GRPC_PORT in ports else 0),
                ],
                log=str(self.state.log_dir / f"pod-{pod.name}-http.log"),
            )
            iperf = ProcessRecord(
                name=iperf_name(pod.name),
                netns=pod.netns,
                argv=["iperf3", "--server", "--port", str(IPERF_PORT), "--forceflush"],
                log=str(self.state.log_dir / f"pod-{pod.name}-iperf3.log"),
            )
            self._launch(server)
            self._launch(iperf)
            started.append((pod, server, iperf))
        for pod, server, iperf in started:
            assert server.pid is not None
            ports = self.topology.server_ports(pod)
            process.wait_for(
                functools.partial(_serving, server.pid, ports),
                [server, iperf],
                timeout,
                f"pod {pod.name} to listen on {', '.join(map(str, ports))}",
            )
        progress(
            f"  servers up in {len(started)} pods: http :{HTTP_PORT}, iperf3 :{IPERF_PORT}; "
            f"h2c :{H2_PORT} and grpc :{GRPC_PORT} in the endpoints of "
            + ", ".join(s.name for s in self.topology.services if H2_PORT in s.port_map.values())
        )

    # -- using ------------------------------------------------------------------------------

    def netns_of(self, target: str) -> str:
        """The namespace of a pod (waypoint pods too), node name or `prometheus`; TestbedError
        naming the choices otherwise."""
        for pod in self.topology.pods:
            if pod.name == target:
                return pod.netns
        for node in self.topology.nodes:
            if node.name == target:
                return node.netns
        self.refresh()
        for waypoint in self.state.waypoints:
            if waypoint.name == target:
                return waypoint.netns
        if target == prometheus.PROMETHEUS and self.state.prometheus:
            return prometheus.netns(self.prefix)
        pods = ", ".join(
            [p.name for p in self.topology.pods] + [w.name for w in self.state.waypoints]
        )
        nodes = ", ".join(n.name for n in self.topology.nodes)
        raise TestbedError(f"no pod named {target!r}; pods: {pods} (nodes: {nodes})")

    def exec_argv(self, target: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns_of(target), *argv]

    def exec(
        self,
        pod: str,
        argv: Sequence[str],
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the pod's (or node's) namespace; output is captured, status returned."""
        return subprocess.run(
            self.exec_argv(pod, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _proc(self, name: str) -> ProcessStatus:
        record = self.state.process(name)
        if record is None:
            return ProcessStatus(name, None, False, None)
        return ProcessStatus(name, record.pid, process.is_alive(record), record.log)

    def status(self) -> TestbedStatus:
        """Everything a person or a test needs to know about the testbed."""
        self.refresh()
        t = self.topology
        state = self.state
        cp = self._proc(mesh.CONTROLPLANE)
        nodes = []
        for node in t.nodes:
            agent = self._proc(mesh.agent_name(node.name))
            nodes.append(
                NodeStatus(
                    name=node.name,
                    netns=node.netns,
                    ip=node.ip,
                    pod_cidr=node.pod_cidr,
                    ipv6=node.ipv6,
                    pod_cidr6=node.pod_cidr6,
                    log=agent.log,
                    agent=agent,
                    enroll_socket=mesh.enroll_socket(state, node.name) if state.ambient else None,
                )
            )
        pods = [
            PodStatus(
                name=pod.name,
                namespace=pod.namespace,
                node=pod.node,
                netns=pod.netns,
                ip=pod.ip,
                ipv6=pod.ipv6,
                ips=tuple(pod.ips),
                ambient=pod.ambient,
                enrolled=pod.ambient and state.ambient,
                sidecar=self._proc(sidecar.sidecar_name(pod.name))
                if pod.ambient and state.mode == MODE_SIDECAR
                else None,
                service_account=pod.service_account,
                app=pod.app,
                version=pod.version,
                role=pod.role,
                uid=pod.uid,
                http_port=HTTP_PORT,
                iperf_port=IPERF_PORT,
                h2_port=H2_PORT if H2_PORT in t.server_ports(pod) else None,
                grpc_port=GRPC_PORT if GRPC_PORT in t.server_ports(pod) else None,
                host_iface=pod.host_iface,
                services=tuple(pod.services),
                processes=(self._proc(http_name(pod.name)), self._proc(iperf_name(pod.name))),
            )
            for pod in t.pods
        ]
        services = [
            ServiceStatus(
                name=svc.name,
                namespace=svc.namespace,
                hostname=svc.hostname,
                vip=svc.vip,
                vips=tuple(svc.vips),
                ports=tuple(
                    ServicePortStatus(p.port, p.target_port, p.name, p.app_protocol)
                    for p in svc.ports
                ),
                endpoints=tuple(p.name for p in t.endpoints(svc.name)),
            )
            for svc in t.services
        ]
        return TestbedStatus(
            prefix=self.prefix,
            state_dir=str(self.state_dir),
            complete=state.complete,
            mesh=state.mesh,
            mode=state.mode,
            dual_stack=state.dual_stack,
            config_dir=str(state.config_dir),
            fabric=FabricStatus(t.fabric_netns, FABRIC_BRIDGE, FABRIC_SUBNET),
            controlplane=ControlPlaneStatus(
                netns=t.cp_netns,
                ip=t.controlplane_ip,
                address=str(t.controlplane_address),
                monitoring=str(t.controlplane_monitoring),
                debug_config=self.controlplane_debug_url,
                log=cp.log,
                pid=cp.pid,
                alive=cp.alive,
                root_cert=mesh.root_cert(state) if state.mesh else None,
            ),
            dns=self._dns_status(),
            namespaces=tuple(
                NamespaceStatus(name, labels) for name, labels in state.namespace_labels.items()
            ),
            nodes=tuple(nodes),
            pods=tuple(pods),
            services=tuple(services),
            waypoints=tuple(self._waypoint_status(w) for w in state.waypoints),
            prometheus=self._prometheus_status(),
            processes=tuple(self._proc(r.name) for r in state.processes),
        )

    def _dns_status(self) -> DnsStatus:
        t = self.topology
        search = clusterdns.resolv_conf("<ns>", ()).splitlines()[0].split()[1:]
        return DnsStatus(
            netns=t.dns_netns,
            nameservers=t.dns_ips,
            search=tuple(search),
            upstream_zone=clusterdns.UPSTREAM_ZONE,
            external_netns=t.external_netns,
            external_host=clusterdns.EXTERNAL_HOST,
            external_ips=t.external_ips,
            processes=tuple(
                self._proc(name)
                for name in (
                    clusterdns.CLUSTER_DNS,
                    clusterdns.UPSTREAM_DNS,
                    clusterdns.EXTERNAL_SERVER,
                )
            ),
        )

    def _prometheus_status(self) -> PrometheusStatus | None:
        if not self.state.prometheus:
            return None
        proc = self._proc(prometheus.PROMETHEUS)
        return PrometheusStatus(
            netns=prometheus.netns(self.prefix),
            url=prometheus.url(),
            config=str(prometheus.config_file(self.state)),
            targets_dir=str(prometheus.targets_dir(self.state)),
            log=proc.log,
            pid=proc.pid,
            alive=proc.alive,
        )

    def _waypoint_status(self, waypoint: WaypointPlan) -> WaypointStatus:
        proc = self._proc(mesh.waypoint_name(waypoint))
        return WaypointStatus(
            gateway=waypoint.gateway,
            namespace=waypoint.namespace,
            pod=waypoint.name,
            node=waypoint.node,
            netns=waypoint.netns,
            ip=waypoint.ip,
            ips=waypoint.ips,
            service_account=waypoint.service_account,
            hostname=waypoint.hostname,
            vip=waypoint.vip,
            vips=waypoint.vips,
            host_iface=waypoint.host_iface,
            log=proc.log,
            process=proc,
        )

    def refresh(self) -> None:
        """Re-read the state file: another process (`testbed agent ...`) may have changed it."""
        fresh = State.load(self.state_dir)
        if fresh is None:
            return
        # Keep the Popen handles of our own children, so they are reaped when they exit.
        popens = {(r.name, r.pid): r.popen for r in self.state.processes if r.popen is not None}
        for record in fresh.processes:
            record.popen = popens.get((record.name, record.pid))
        self.state = fresh

    # -- the mesh's processes: one node's agent, the control plane ----------------------------

    def _agent(self, node: str) -> tuple[NodePlan, ProcessRecord]:
        self.refresh()
        try:
            plan_ = self.topology.node(node)
        except KeyError:
            nodes = ", ".join(n.name for n in self.topology.nodes)
            raise TestbedError(f"no node named {node!r}; nodes: {nodes}") from None
        record = self.state.process(mesh.agent_name(node))
        if record is None:
            raise TestbedError(
                f"testbed {self.prefix} runs in {self.state.mode} mode: {node} has no agent"
            )
        return plan_, record

    def _controlplane(self) -> ProcessRecord:
        self.refresh()
        record = self.state.process(mesh.CONTROLPLANE)
        if record is None:
            raise TestbedError(f"testbed {self.prefix} runs without the mesh: no control plane")
        return record

    @staticmethod
    def _stop(record: ProcessRecord, what: str) -> int | None:
        """SIGTERM, wait (SIGKILL after 8 s); the pid it had, or None if it was not running."""
        was_running = process.is_alive(record)
        process.stop([record])
        if process.is_alive(record):
            raise TestbedError(f"{what} (pid {record.pid}) did not stop")
        return record.pid if was_running else None

    def _restart(
        self, old: ProcessRecord, what: str, wait_ready: Callable[[ProcessRecord], None]
    ) -> ProcessRecord:
        """Start `old`'s command line again as a new record in the state, and wait until ready."""
        if process.is_alive(old):
            raise TestbedError(f"{what} is already running (pid {old.pid})")
        record = ProcessRecord(name=old.name, netns=old.netns, argv=old.argv, log=old.log)
        self.state.replace_process(record)
        process.start(record)
        self.state.save()
        wait_ready(record)
        return record

    def stop_agent(self, node: str) -> int | None:
        """SIGTERM the agent of `node` and wait for it to exit (SIGKILL after 8 s).

        Returns the pid it had, or None if it was not running.
        """
        _, record = self._agent(node)
        return self._stop(record, f"the agent of {node}")

    def kill_agent(self, node: str) -> int | None:
        """SIGKILL the agent of `node` (no chance to clean up); the pid it had, or None."""
        _, record = self._agent(node)
        if not process.is_alive(record):
            return None
        process.kill(record)
        return record.pid

    def start_agent(self, node: str, timeout: float = 60.0) -> ProcessRecord:
        """Start the agent of `node` again, with the command line `up` gave it, and wait until
        it is ready. The CNI plugin is not run: the agent re-enrolls its pods by itself."""
        plan_, old = self._agent(node)
        return self._restart(
            old,
            f"the agent of {node}",
            lambda record: mesh.wait_agent_ready(plan_, record, timeout),
        )

    def release_pod_app(
        self, pod: str, *, fail_percent: float = 0.0, delay_ms: int = 0, timeout: float = 30.0
    ) -> ProcessRecord:
        """Restart the app of `pod` as a release that behaves so (`podserver --fail-percent`,
        `--delay-ms`; both 0: a healthy one), as rolling out a new image of it would, and wait
        until it serves again."""
        self.refresh()
        plan_ = self.topology.pod(pod)
        old = self.state.process(http_name(pod))
        if old is None:
            raise TestbedError(f"pod {pod} has no app process recorded")
        self._stop(old, f"the app of pod {pod}")
        base = (
            old.argv[: old.argv.index("--fail-percent")]
            if "--fail-percent" in old.argv
            else old.argv
        )
        argv = [*base, "--fail-percent", f"{fail_percent:g}", "--delay-ms", str(delay_ms)]
        record = ProcessRecord(name=old.name, netns=old.netns, argv=argv, log=old.log)
        self.state.replace_process(record)
        process.start(record)
        self.state.save()
        assert record.pid is not None
        ports = self.topology.server_ports(plan_)
        process.wait_for(
            functools.partial(_serving, record.pid, ports),
            [record],
            timeout,
            f"pod {pod} to listen on {', '.join(map(str, ports))}",
        )
        return record

    def stop_controlplane(self) -> int | None:
        """SIGTERM the control plane and wait for it to exit (SIGKILL after 8 s); the agents keep
        serving with what they have. Returns the pid it had, or None if it was not running."""
        return self._stop(self._controlplane(), "the control plane")

    def start_controlplane(self, timeout: float = 60.0) -> ProcessRecord:
        """Start the control plane again (same command line, same CA) and wait until it serves;
        the agents reconnect by themselves."""
        return self._restart(
            self._controlplane(),
            "the control plane",
            lambda record: mesh.wait_controlplane_ready(self.topology, self.state, record, timeout),
        )

    # -- Kubernetes resources ----------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        """The directory of Kubernetes YAML the control plane watches."""
        return self.state.config_dir

    def apply(
        self,
        text: str,
        source: str = "-",
        progress: Progress = _quiet,
        timeout: float = 60.0,
        dry_run: str = "none",
    ) -> list[resources.ObjectRef]:
        """Write every object of a multi-document YAML text into the watched directory,
        replacing earlier versions of the same objects (kubectl apply). TestbedError for text
        that is not YAML, an object without kind or metadata.name, or objects the control plane
        would reject: they are checked first with its own validation, together with what the
        directory holds, and nothing is written unless all pass (warnings are reported).
        `dry_run` as kubectl's: `client` checks the objects alone, `server` with the directory's
        contents, and neither writes anything.

        A Gateway of class istio-waypoint also gets its waypoint pod, ready (within `timeout`)
        before this returns; applying it again leaves a running pod alone (its Pod and Service
        follow the Gateway's labels and listeners). A Gateway whose class is no longer
        istio-waypoint loses its pod; Gateways of other classes are only written."""
        objects = resources.parse(text, source)
        documents = [document for _, document in objects]
        gateways: list[tuple[tuple[str, str], resources.Document]] = []
        for ref, document in objects:
            if waypoints.is_waypoint(document):
                gateways.append((waypoints.gateway_key(document, f"{source}: {ref}"), document))
            elif waypoints.is_gateway(document):
                gateways.append(
                    ((ref.namespace or waypoints.DEFAULT_NAMESPACE, ref.name), document)
                )
        findings = resources.check(self.config_dir, documents, with_existing=dry_run != "client")
        errors = [f.text for f in findings if f.severity == "error"]
        # a waypoint this apply brings up is not ready while the objects are checked: a label
        # naming it is no problem (its pod is ready before this returns)
        coming = tuple(
            f'WaypointIsNotReady: waypoint "{namespace}/{name}"'
            for (namespace, name), document in gateways
            if waypoints.is_waypoint(document)
        )
        for f in findings:
            if f.severity != "error" and not any(c in f.text for c in coming):
                progress(f"{f.severity}: {f.text}")
        if errors:
            raise TestbedError(
                f"{source}: rejected by the control plane's validation, nothing written:\n  "
                + "\n  ".join(errors)
            )
        if dry_run != "none":
            refs = [ref for ref, _ in objects]
            for ref in refs:
                progress(f"{ref} valid (dry run: {dry_run}, not written)")
            return refs
        self.refresh()
        if not self.state.mesh and any(waypoints.is_waypoint(d) for _, d in gateways):
            raise TestbedError(
                f"testbed {self.prefix} runs without the mesh: a waypoint needs the control "
                "plane (bring the testbed up in ambient mode)"
            )
        refs = resources.write(self.config_dir, documents)
        self._mirror()
        for ref in refs:
            progress(f"{ref} written to {self.config_dir / ref.file_name}")
        for (namespace, name), document in gateways:
            self._reconcile_waypoint(namespace, name, document, progress, timeout)
        return refs

    def _mirror(self) -> None:
        """What Kubernetes derives from the objects for the pods: kube-dns's records of the
        Services, and the `istio` ConfigMap as mounted into the agents."""
        clusterdns.sync(self.state)
        mesh.sync_mesh_config(self.state)

    def delete(
        self, text: str, source: str = "-", progress: Progress = _quiet
    ) -> list[tuple[resources.ObjectRef, bool]]:
        """Remove the objects named in a multi-document YAML text (kubectl delete -f); each
        with whether it was there. A waypoint Gateway's pod is stopped and removed after it
        (as Kubernetes' garbage collector removes what the Gateway owns)."""
        objects = resources.parse(text, source)
        self.refresh()
        removed = resources.remove(self.config_dir, [ref for ref, _ in objects])
        self._mirror()
        for ref, existed in removed:
            progress(f"{ref} deleted" if existed else f"{ref} not found (nothing to delete)")
        for ref, document in objects:
            if waypoints.is_gateway(document):
                existing = self.state.waypoint(
                    ref.namespace or waypoints.DEFAULT_NAMESPACE, ref.name
                )
                if existing is not None:
                    self._remove_waypoint(existing, progress)
        return removed

    # -- the gateway controller: waypoint pods ------------------------------------------------

    def _reconcile_waypoint(
        self,
        namespace: str,
        gateway: str,
        document: resources.Document,
        progress: Progress,
        timeout: float,
    ) -> None:
        existing = self.state.waypoint(namespace, gateway)
        if not waypoints.is_waypoint(document):
            if existing is not None:
                progress(f"Gateway {namespace}/{gateway} is no longer of class istio-waypoint")
                self._remove_waypoint(existing, progress)
            return
        if existing is not None:
            record = self.state.process(mesh.waypoint_name(existing))
            if record is not None and process.is_alive(record):
                resources.write(
                    self.config_dir,
                    [
                        waypoints.pod_resource(existing, document),
                        waypoints.service_resource(existing, document),
                    ],
                )
                progress(
                    f"waypoint pod {namespace}/{existing.name} keeps running (pid {record.pid})"
                )
                return
            # Crashed, or an earlier apply was interrupted: build it afresh.
            progress(f"waypoint pod {namespace}/{existing.name} is not running: replacing it")
            self._remove_waypoint(existing, progress)
        self._create_waypoint(namespace, gateway, document, progress, timeout)

    def _create_waypoint(
        self,
        namespace: str,
        gateway: str,
        document: resources.Document,
        progress: Progress,
        timeout: float,
    ) -> None:
        wp = waypoints.plan_waypoint(
            self.topology,
            namespace,
            gateway,
            self.state.waypoints,
            resources.addresses_in_use(self.config_dir),
        )
        self.state.add_waypoint(wp)
        self.state.add_namespace(wp.netns)
        try:
            self._add_netns(wp.netns)
            wire_pod(self.topology.node(wp.node), wp)
            clusterdns.write_resolv_conf(wp.netns, wp.namespace, self.topology.dns_ips)
            resources.write(self.config_dir, [waypoints.pod_resource(wp, document)])
            record = mesh.waypoint_record(self.state, wp, self.topology.controlplane_address)
            self._launch(record)
            process.wait_for(
                functools.partial(mesh.http_ready, wp.netns),
                [record],
                timeout,
                f"waypoint pod {namespace}/{wp.name} to be ready",
            )
            resources.write(self.config_dir, [waypoints.service_resource(wp, document)])
            clusterdns.sync(self.state)
            self._prometheus_targets_changed()
        except BaseException as exc:
            self._remove_waypoint(wp, _quiet)
            if isinstance(exc, TestbedError):
                raise TestbedError(
                    f"{exc}\nthe waypoint pod was removed again; Gateway {namespace}/{gateway} "
                    "stays applied: apply it again to retry, or delete it"
                ) from None
            raise
        progress(
            f"waypoint pod {namespace}/{wp.name} ready on {wp.node}: {' '.join(wp.ips)}, "
            f"Service {wp.hostname} {' '.join(wp.vips)} (pid {record.pid}, log {record.log})"
        )

    def _remove_waypoint(self, wp: WaypointPlan, progress: Progress) -> None:
        """Service first (services stop binding to it), then the process, Pod and namespace."""
        resources.remove(
            self.config_dir, [resources.ObjectRef("Service", wp.namespace, wp.gateway)]
        )
        record = self.state.process(mesh.waypoint_name(wp))
        if record is not None:
            if record.pid is None:
                process.find_unrecorded(record)
            self._stop(record, f"the waypoint pod {wp.namespace}/{wp.name}")
            self.state.remove_process(record.name)
        resources.remove(self.config_dir, [resources.ObjectRef("Pod", wp.namespace, wp.name)])
        clusterdns.sync(self.state)
        namespaces.delete(wp.netns)
        clusterdns.remove_resolv_conf(wp.netns)
        self.state.remove_namespace(wp.netns)
        self.state.remove_waypoint(wp)
        self._prometheus_targets_changed()
        progress(f"waypoint pod {wp.namespace}/{wp.name} stopped and removed")

    # -- Prometheus ---------------------------------------------------------------------------

    def _prometheus(self) -> ProcessRecord:
        self.refresh()
        record = self.state.process(prometheus.PROMETHEUS)
        if record is None:
            raise TestbedError(
                f"testbed {self.prefix} runs no Prometheus (bring it up with --prometheus)"
            )
        return record

    def stop_prometheus(self) -> int | None:
        """SIGTERM the testbed's Prometheus and wait for it to exit; the pid it had, or None."""
        return self._stop(self._prometheus(), "Prometheus")

    def start_prometheus(self, timeout: float = 60.0) -> ProcessRecord:
        """Start Prometheus again (same command line and storage) and wait until it is ready."""
        return self._restart(
            self._prometheus(),
            "Prometheus",
            lambda record: prometheus.wait_ready(self.state, record, timeout),
        )

    def prometheus_query(self, query: str, timeout: float = 5.0) -> list[promql.Sample]:
        """Evaluate PromQL `query` now on the testbed's Prometheus (from its namespace).

        TestbedError if the testbed runs none; `promql.PrometheusError` if it does not
        answer with data."""
        self.refresh()
        if not self.state.prometheus:
            raise TestbedError(
                f"testbed {self.prefix} runs no Prometheus (bring it up with --prometheus)"
            )
        connect = prometheus.connect_in(prometheus.netns(self.prefix))
        return promql.instant_query(prometheus.url(), query, timeout=timeout, connect=connect)

    @property
    def controlplane_debug_url(self) -> str:
        """Where the control plane reports what it loaded and every validation error (reached
        from inside the control plane's namespace, e.g. with `testbed exec`)."""
        return f"http://{self.topology.controlplane_monitoring}/debug/config"

    # -- tearing down -----------------------------------------------------------------------

    def down(self, progress: Progress = _quiet) -> None:
        """Stop every recorded process, delete every namespace and the state dir. Idempotent."""
        self.refresh()
        _teardown(self.state, progress)


def _teardown(state: State, progress: Progress) -> None:
    if state.ambient:
        # As a runtime deleting the pods would: the agents unenroll them while they still run.
        topology = plan(state.prefix, state.nodes, state.pods_per_node, state.dual_stack)
        mesh.unenroll(topology, state, progress)
    for record in state.processes:
        if record.pid is None:
            process.find_unrecorded(record)
    running = process.stop(list(reversed(state.processes)))
    if running:
        progress(f"stopped {len(running)} processes")
    survivors = [r.name for r in state.processes if process.is_alive(r)]
    if survivors:
        raise TestbedError(
            f"could not stop {', '.join(survivors)}; the state in {state.state_dir} is kept, "
            "so `ztunnel-py testbed down` can be run again"
        )
    if state.image is not None:
        image.remove_containers(image.containers_of(state.prefix))
    removed = []
    for name in reversed(state.namespaces):
        strangers = namespaces.pids(name)
        if strangers:
            progress(
                f"warning: processes {' '.join(map(str, strangers))} are still in {name}; they "
                "were not started by the testbed and keep running"
            )
        if namespaces.exists(name):
            namespaces.delete(name)
            removed.append(name)
        clusterdns.remove_resolv_conf(name)
    if removed:
        progress(f"deleted {len(removed)} namespaces")
    if state.ambient:
        for i in range(1, state.nodes + 1):
            pins = Path(mesh.bpf_pin_root(state, f"node{i}"))
            shutil.rmtree(pins, ignore_errors=True)
            # ...and the shared parents once the last testbed's pins are gone
            for parent in (pins.parent, pins.parent.parent):
                with contextlib.suppress(OSError):
                    parent.rmdir()
    shutil.rmtree(state.state_dir, ignore_errors=True)
    _remove_empty_default_dirs(state.state_dir)
    progress(f"testbed {state.prefix} is down")


def _remove_empty_default_dirs(state_dir: Path) -> None:
    """Remove /run/ztunnel-py/testbed (and /run/ztunnel-py) if we emptied them."""
    if state_dir.parent != DEFAULT_STATE_ROOT:
        return
    for directory in (DEFAULT_STATE_ROOT, DEFAULT_STATE_ROOT.parent):
        try:
            directory.rmdir()
        except OSError:
            return


def down(
    prefix: str = "zt-",
    state_dir: str | os.PathLike[str] | None = None,
    progress: Progress = _quiet,
) -> bool:
    """Tear down the testbed recorded in the state dir; False if there was nothing to remove."""
    directory = _state_dir(prefix, state_dir)
    state = State.load(directory)
    if state is None:
        if not directory.exists():
            return False
        # `up` died between creating the directory and writing the first state: nothing else
        # can exist yet.
        shutil.rmtree(directory, ignore_errors=True)
        _remove_empty_default_dirs(directory)
        progress(f"removed {directory}")
        return True
    _teardown(state, progress)
    return True
