"""The testbed's plan: every name and address `testbed up` creates, decided without any I/O.

`plan(prefix, nodes, pods_per_node, dual_stack, mode, controlplane_ipv6)` is deterministic, so
`up`, `status`,
`down` and the Kubernetes resources (`resources.py`) all derive the same picture from the values
stored in the state file.

Modes: `ambient` (the agents capture the pods of ambient namespaces), `sidecar` (the same
namespaces are labelled `istio-injection: enabled` instead and every pod in them gets its own
proxy, `sidecar.py`) and `none` (no mesh at all: the benchmark's baseline).

Addressing and wiring:

- fabric: namespace `<prefix>fabric` holds bridge `br0` (10.250.0.0/24, no address of its own).
  The control plane namespace `<prefix>cp` has `eth0` 10.250.0.2; node i's namespace
  `<prefix>node<i>` has `eth0` 10.250.0.(10+i). Their peers (`vcp`, `vnode<i>`) are bridge ports.
- pods: node i owns 10.244.i.0/24. Pod slot k on node i is 10.244.i.(10+k), in namespace
  `<prefix>pod-<name>` with `eth0` holding the pod IP as a /32, an on-link route to the gateway
  10.244.i.1 and a default route via it (the Calico layout). The node side of the pod's veth is
  `veth<k>`; every such veth carries 10.244.i.1/32 (so the node answers ARP for the gateway on
  each of them) and the node has a /32 route to the pod through it. All pod traffic, even between
  pods of one node, is therefore routed by the node, and no bridge or proxy ARP is needed.
  Each node routes the other nodes' pod /24s via their fabric IPs and forwards (ip_forward=1);
  the control plane routes every node's pod /24 via that node (sidecars call it from pods).
- services: VIPs come from 10.96.0.0/16. A VIP is only reachable through the mesh (there is no
  kube-proxy), as in an ambient cluster whose dataplane is the mesh.
- dual stack (`dual_stack=True`): every address above gets an IPv6 twin that reads the same,
  all /128 (pods, gateways) or /64 (fabric) with DAD off: the control plane is also
  fd00:10:250::2, node i's fabric address is fd00:10:250::(10+i), its pods are in
  fd00:10:244:i::/64 (pod slot k is fd00:10:244:i::(10+k), the gateway fd00:10:244:i::1), and
  VIPs come from fd00:10:96::/64 (echo fd00:10:96::10).
- cluster DNS (`clusterdns.py`): namespace `<prefix>dns` on the fabric, 10.250.0.5 (and
  fd00:10:250::5), runs dnsmasq; every pod's resolv.conf names it. The "external" host outside
  the mesh, `<prefix>ext` at 10.250.0.6 (and fd00:10:250::6), runs a pod server and is what the
  fake upstream zone's `api.external.test` names. Both route the pods' /24s via their nodes.
- the control plane is addressed over IPv4 (10.250.0.2:15012) unless `controlplane_ipv6=True`
  (dual stack only): then it serves on [fd00:10:250::2]:15012 (monitoring on :15014) and the
  agents reach it there.

Pods (Kubernetes-like, so identities differ), by slot k on node i:

- k=0: `echo-<i>` in `apps`, service account `echo`, label `version: v1` on odd nodes and `v2`
  on even ones (two versions of one service, for subsets and splits): endpoint of service
  `echo` (echo.apps.svc.cluster.local, VIP 10.96.0.10);
- k=1: a client: `web-<i>` (`apps`/`web`) on odd nodes, `curl-<i>` (`clients`/`curl`) on even
  nodes, so a same-namespace and a cross-namespace caller exist as soon as there are two nodes;
- k=2: `store-<i>` in `db`, service account `store`: endpoint of service `store`
  (store.db.svc.cluster.local, VIP 10.96.0.20, port 80->8080);
- k>=3: more `echo` endpoints, `echo-<i>-<k>` (the version of their node).

Besides those, node 1 always has `legacy-1` (`legacy`/`legacy`, 10.244.1.250, veth `vlegacy`),
a client in namespace `legacy`, which is not labelled for ambient: the CNI plugin does not enroll
it, its workload speaks plain TCP (not HBONE), and it shows how meshed pods accept plaintext
from outside the mesh (PERMISSIVE). Namespaces `apps`, `clients` and `db` carry
`istio.io/dataplane-mode=ambient`.

Every pod carries the labels `app: <service account>` (and `version` where it has one), runs the
pod app (`podserver`) with HTTP/1.1 on 8080 and `iperf3 -s` on 5201. The endpoints of `echo`
also serve HTTP/2 with prior knowledge on 8082 and gRPC on 9090, the ports their service
declares as a Kubernetes user would, the application protocol in both forms istiod reads:

    echo:  http 80->8080 (name), http2 8082->8082 (appProtocol kubernetes.io/h2c),
           grpc 9090->9090 (name and appProtocol grpc), tcp-iperf 5201->5201 (name)
    store: http 80->8080 (name)

Other pods leave the h2c and gRPC servers off (gRPC alone costs a pod about 18 MB).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ztunnel_py.cni.spec import DATAPLANE_MODE, should_enroll
from ztunnel_py.model import NetworkAddress, Service, SocketAddr, TunnelProtocol, Workload
from ztunnel_py.model.ports import CONTROL_PLANE_MONITORING_PORT, CONTROL_PLANE_PORT
from ztunnel_py.model.workload import pod_uid
from ztunnel_py.testbed.errors import TestbedError

FABRIC_SUBNET = "10.250.0.0/24"
FABRIC_SUBNET6 = "fd00:10:250::/64"
CONTROLPLANE_IP = "10.250.0.2"
CONTROLPLANE_IP6 = "fd00:10:250::2"
DNS_IP = "10.250.0.5"
DNS_IP6 = "fd00:10:250::5"
EXTERNAL_IP = "10.250.0.6"
EXTERNAL_IP6 = "fd00:10:250::6"
FABRIC_BRIDGE = "br0"
HTTP_PORT = 8080
H2_PORT = 8082
GRPC_PORT = 9090
IPERF_PORT = 5201
CLUSTER_DOMAIN = "svc.cluster.local"
MAX_NODES = 100
MAX_PODS_PER_NODE = 100
PREFIX_PATTERN = re.compile(r"^zt[a-z0-9-]{0,22}$")

CLIENT = "client"
SERVER = "server"

AMBIENT = {DATAPLANE_MODE: "ambient"}
SIDECAR_INJECTION = {"istio-injection": "enabled"}
MODE_NONE = "none"
MODE_SIDECAR = "sidecar"
MODE_AMBIENT = "ambient"
MODES = (MODE_NONE, MODE_SIDECAR, MODE_AMBIENT)
LEGACY_NAMESPACE = "legacy"
# Labels of every Kubernetes namespace the testbed's pods can live in.
NAMESPACE_LABELS: Mapping[str, Mapping[str, str]] = {
    "apps": AMBIENT,
    "clients": AMBIENT,
    "db": AMBIENT,
    LEGACY_NAMESPACE: {},
}


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    index: int
    netns: str
    ip: str
    pod_cidr: str
    gateway: str
    fabric_iface: str
    ipv6: str | None = None
    pod_cidr6: str | None = None
    gateway6: str | None = None


@dataclass(frozen=True, slots=True)
class PortPlan:
    """A Service port as a Kubernetes user declares it (`appProtocol` None: read from the name)."""

    name: str
    port: int
    target_port: int
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class ServicePlan:
    name: str
    namespace: str
    vip: str
    ports: tuple[PortPlan, ...]
    vip6: str | None = None

    @property
    def port_map(self) -> dict[int, int]:
        """Service port -> target port."""
        return {p.port: p.target_port for p in self.ports}

    @property
    def vips(self) -> tuple[str, ...]:
        return (self.vip,) if self.vip6 is None else (self.vip, self.vip6)

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.{CLUSTER_DOMAIN}"

    @property
    def key(self) -> str:
        """How workloads refer to the service: `namespace/hostname`."""
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class PodPlan:
    name: str
    namespace: str
    service_account: str
    app: str
    role: str
    node: str
    netns: str
    ip: str
    host_iface: str
    services: tuple[str, ...]
    ipv6: str | None = None
    version: str | None = None

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip,) if self.ipv6 is None else (self.ip, self.ipv6)

    @property
    def labels(self) -> dict[str, str]:
        """The Pod's labels, as a Deployment's pod template would set them."""
        return {"app": self.app} | ({"version": self.version} if self.version else {})

    @property
    def ambient(self) -> bool:
        """The pod's namespace is labelled for ambient, so the CNI plugin enrolls it."""
        return should_enroll(NAMESPACE_LABELS[self.namespace], {})

    @property
    def uid(self) -> str:
        return pod_uid(self.namespace, self.name)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str
    fabric_netns: str
    cp_netns: str
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    services: tuple[ServicePlan, ...]
    dual_stack: bool = False
    mode: str = MODE_AMBIENT
    controlplane_ipv6: bool = False

    @property
    def dns_netns(self) -> str:
        return f"{self.prefix}dns"

    @property
    def external_netns(self) -> str:
        return f"{self.prefix}ext"

    @property
    def dns_ips(self) -> tuple[str, ...]:
        """The cluster DNS server's addresses (every pod's nameservers)."""
        return (DNS_IP, DNS_IP6) if self.dual_stack else (DNS_IP,)

    @property
    def external_ips(self) -> tuple[str, ...]:
        """The external host's addresses (outside the mesh, beyond the nodes)."""
        return (EXTERNAL_IP, EXTERNAL_IP6) if self.dual_stack else (EXTERNAL_IP,)

    @property
    def controlplane_ips(self) -> tuple[str, ...]:
        """The control plane namespace's fabric addresses."""
        return (CONTROLPLANE_IP, CONTROLPLANE_IP6) if self.dual_stack else (CONTROLPLANE_IP,)

    @property
    def controlplane_ip(self) -> str:
        """The address the control plane serves on and the proxies reach it at."""
        return CONTROLPLANE_IP6 if self.controlplane_ipv6 else CONTROLPLANE_IP

    @property
    def controlplane_address(self) -> SocketAddr:
        """The control plane's gRPC address (CA and workload xDS)."""
        return SocketAddr(self.controlplane_ip, CONTROL_PLANE_PORT)

    @property
    def controlplane_monitoring(self) -> SocketAddr:
        return SocketAddr(self.controlplane_ip, CONTROL_PLANE_MONITORING_PORT)

    @property
    def namespace_labels(self) -> dict[str, dict[str, str]]:
        """Labels of the Kubernetes namespaces that have pods, in order of first appearance
        (in sidecar mode the mesh namespaces ask for injection instead of ambient)."""
        names = dict.fromkeys(p.namespace for p in self.pods)
        labels = {name: dict(NAMESPACE_LABELS[name]) for name in names}
        if self.mode == MODE_SIDECAR:
            labels = {n: dict(SIDECAR_INJECTION) if v == AMBIENT else v for n, v in labels.items()}
        return labels

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every network namespace of the testbed, in creation order."""
        return (
            self.fabric_netns,
            self.cp_netns,
            self.dns_netns,
            self.external_netns,
            *(n.netns for n in self.nodes),
            *(p.netns for p in self.pods),
        )

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pod(self, name: str) -> PodPlan:
        for pod in self.pods:
            if pod.name == name:
                return pod
        names = ", ".join(p.name for p in self.pods)
        raise TestbedError(f"no pod named {name!r}; pods: {names}")

    def pods_on(self, node: str) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if p.node == node)

    def service(self, name: str) -> ServicePlan:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def endpoints(self, service: str) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if service in p.services)

    def server_ports(self, pod: PodPlan) -> tuple[int, ...]:
        """The ports the pod's servers listen on: HTTP/1.1 and iperf3, and the target ports of
        the services it is an endpoint of."""
        ports = {HTTP_PORT, IPERF_PORT}
        for svc in self.services:
            if svc.name in pod.services:
                ports.update(p.target_port for p in svc.ports)
        return tuple(sorted(ports))

    def workloads(self) -> list[Workload]:
        """The pods as mesh workloads: HBONE for enrolled pods, plain TCP for the others."""
        by_name = {s.name: s for s in self.services}
        result = []
        for pod in self.pods:
            services = {by_name[s].key: by_name[s].port_map for s in pod.services}
            result.append(
                Workload(
                    uid=pod.uid,
                    name=pod.name,
                    namespace=pod.namespace,
                    addresses=tuple(ipaddress.ip_address(ip) for ip in pod.ips),
                    service_account=pod.service_account,
                    node=pod.node,
                    tunnel_protocol=TunnelProtocol.HBONE if pod.ambient else TunnelProtocol.NONE,
                    canonical_name=pod.app,
                    canonical_revision=pod.version or "latest",
                    workload_name=pod.app,
                    services=services,
                )
            )
        return result

    def mesh_services(self) -> list[Service]:
        return [
            Service(
                name=s.name,
                namespace=s.namespace,
                hostname=s.hostname,
                vips=tuple(NetworkAddress.parse("/" + vip) for vip in s.vips),
                ports=s.port_map,
            )
            for s in self.services
        ]


_ECHO = ServicePlan(
    "echo",
    "apps",
    "10.96.0.10",
    (
        PortPlan("http", 80, HTTP_PORT),
        PortPlan("http2", H2_PORT, H2_PORT, "kubernetes.io/h2c"),
        PortPlan("grpc", GRPC_PORT, GRPC_PORT, "grpc"),
        PortPlan("tcp-iperf", IPERF_PORT, IPERF_PORT),
    ),
)
_STORE = ServicePlan("store", "db", "10.96.0.20", (PortPlan("http", 80, HTTP_PORT),))
_VIP6 = {"echo": "fd00:10:96::10", "store": "fd00:10:96::20"}


def validate_prefix(prefix: str) -> None:
    if not PREFIX_PATTERN.match(prefix):
        raise TestbedError(
            f"prefix {prefix!r} is not allowed: it must start with 'zt' and use at most 24 "
            "characters from a-z, 0-9 and '-' (e.g. 'zt-' or 'ztlab1-')"
        )


def _pod(prefix: str, node: NodePlan, slot: int) -> PodPlan:
    services: tuple[str, ...]
    if slot == 0:
        name, ns, sa, role, services = f"echo-{node.index}", "apps", "echo", SERVER, ("echo",)
    elif slot == 1 and node.index % 2 == 1:
        name, ns, sa, role, services = f"web-{node.index}", "apps", "web", CLIENT, ()
    elif slot == 1:
        name, ns, sa, role, services = f"curl-{node.index}", "clients", "curl", CLIENT, ()
    elif slot == 2:
        name, ns, sa, role, services = f"store-{node.index}", "db", "store", SERVER, ("store",)
    else:
        name, ns, sa, role = f"echo-{node.index}-{slot}", "apps", "echo", SERVER
        services = ("echo",)
    # two versions of echo: v1 on odd nodes, v2 on even ones
    version = ("v1" if node.index % 2 == 1 else "v2") if "echo" in services else None
    return _pod_plan(prefix, node, name, ns, sa, role, services, 10 + slot, f"veth{slot}", version)


def _pod_plan(
    prefix: str,
    node: NodePlan,
    name: str,
    namespace: str,
    service_account: str,
    role: str,
    services: tuple[str, ...],
    host: int,
    host_iface: str,
    version: str | None = None,
) -> PodPlan:
    return PodPlan(
        name=name,
        namespace=namespace,
        service_account=service_account,
        app=service_account,
        role=role,
        node=node.name,
        netns=f"{prefix}pod-{name}",
        ip=f"10.244.{node.index}.{host}",
        host_iface=host_iface,
        services=services,
        ipv6=f"fd00:10:244:{node.index}::{host}" if node.ipv6 else None,
        version=version,
    )


def _legacy_pod(prefix: str, node: NodePlan) -> PodPlan:
    name = f"legacy-{node.index}"
    return _pod_plan(prefix, node, name, LEGACY_NAMESPACE, "legacy", CLIENT, (), 250, "vlegacy")


def plan(
    prefix: str = "zt-",
    nodes: int = 2,
    pods_per_node: int = 2,
    dual_stack: bool = False,
    mode: str = MODE_AMBIENT,
    controlplane_ipv6: bool = False,
) -> Topology:
    """Decide the whole testbed; raises TestbedError for sizes or prefixes we cannot build."""
    validate_prefix(prefix)
    if mode not in MODES:
        raise TestbedError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    if controlplane_ipv6 and not dual_stack:
        raise TestbedError("--controlplane-ipv6 needs --dual-stack (IPv6 on the fabric)")
    if not 1 <= nodes <= MAX_NODES:
        raise TestbedError(f"--nodes must be between 1 and {MAX_NODES} (got {nodes})")
    if not 2 <= pods_per_node <= MAX_PODS_PER_NODE:
        raise TestbedError(
            f"--pods-per-node must be between 2 and {MAX_PODS_PER_NODE} (got {pods_per_node}); "
            "every node needs an echo server and a client"
        )
    node_plans = tuple(
        NodePlan(
            name=f"node{i}",
            index=i,
            netns=f"{prefix}node{i}",
            ip=f"10.250.0.{10 + i}",
            pod_cidr=f"10.244.{i}.0/24",
            gateway=f"10.244.{i}.1",
            fabric_iface=f"vnode{i}",
            ipv6=f"fd00:10:250::{10 + i}" if dual_stack else None,
            pod_cidr6=f"fd00:10:244:{i}::/64" if dual_stack else None,
            gateway6=f"fd00:10:244:{i}::1" if dual_stack else None,
        )
        for i in range(1, nodes + 1)
    )
    pods = tuple(_pod(prefix, n, k) for n in node_plans for k in range(pods_per_node))
    pods += (_legacy_pod(prefix, node_plans[0]),)
    used = {s for p in pods for s in p.services}
    services = tuple(
        dataclasses.replace(s, vip6=_VIP6[s.name] if dual_stack else None)
        for s in (_ECHO, _STORE)
        if s.name in used
    )
    return Topology(
        prefix=prefix,
        fabric_netns=f"{prefix}fabric",
        cp_netns=f"{prefix}cp",
        nodes=node_plans,
        pods=pods,
        services=services,
        dual_stack=dual_stack,
        mode=mode,
        controlplane_ipv6=controlplane_ipv6,
    )
