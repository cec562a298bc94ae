"""Workloads, services and the addresses that tie them together (Istio's workload API, as types)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from ztunnel_py.model.address import IPAddress
from ztunnel_py.model.identity import DEFAULT_TRUST_DOMAIN, Identity
from ztunnel_py.model.policy import Cidr
from ztunnel_py.model.ports import HBONE_PORT

DEFAULT_CLUSTER_ID = "Kubernetes"


def pod_uid(namespace: str, name: str, cluster_id: str = DEFAULT_CLUSTER_ID) -> str:
    """The workload uid istiod gives a pod (`<cluster>//Pod/<namespace>/<name>`), by which
    the agent knows an enrolled pod."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


class TunnelProtocol(enum.Enum):
    NONE = "TCP"
    HBONE = "HBONE"


class AppProtocol(enum.Enum):
    """A service port's application protocol (the workload API's `AppProtocol`): from the
    port's `appProtocol` or its name prefix (`http-`, `grpc-`, ...), as istiod reads them."""

    UNKNOWN = "UNKNOWN"
    HTTP11 = "HTTP11"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"


class WorkloadStatus(enum.Enum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


class NetworkMode(enum.Enum):
    """How a workload is networked. A host-network pod shares its node's IP with every other
    such pod and the node itself, so its address does not identify it: it is reachable as a
    service endpoint but never found by IP."""

    STANDARD = "Standard"
    HOST_NETWORK = "HostNetwork"


class IpFamilies(enum.Enum):
    """The IP families a service's clients may use (absent: automatic, from its VIPs)."""

    DUAL = "Dual"
    IPV4 = "IPv4"
    IPV6 = "IPv6"


class LoadBalancerMode(enum.Enum):
    STANDARD = "Standard"
    STRICT = "Strict"
    FAILOVER = "Failover"
    PASSTHROUGH = "Passthrough"


class HealthPolicy(enum.Enum):
    ONLY_HEALTHY = "OnlyHealthy"
    ALLOW_ALL = "AllowAll"


class LoadBalancerScope(enum.Enum):
    REGION = "Region"
    ZONE = "Zone"
    SUBZONE = "Subzone"
    NODE = "Node"
    CLUSTER = "Cluster"
    NETWORK = "Network"


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """A service's endpoint selection settings (the workload API's `LoadBalancing`)."""

    mode: LoadBalancerMode = LoadBalancerMode.STANDARD
    routing_preferences: tuple[LoadBalancerScope, ...] = ()
    health_policy: HealthPolicy = HealthPolicy.ONLY_HEALTHY


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    """An IP on a network; written `network/IP` (`/10.0.0.1` on the default network)."""

    network: str
    address: IPAddress

    @classmethod
    def parse(cls, text: str) -> NetworkAddress:
        network, sep, ip = text.rpartition("/")
        if not sep:
            network, ip = "", text
        try:
            return cls(network, ipaddress.ip_address(ip))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or a 'network/IP' string") from None

    def __str__(self) -> str:
        return f"{self.network}/{self.address}"


@dataclass(frozen=True, slots=True)
class NetworkCidr:
    """An address range on a network, a service VIP that covers many addresses (a ServiceEntry
    with `addresses: [10.20.0.0/16]`); written `network/CIDR`."""

    network: str
    cidr: Cidr

    def __contains__(self, address: object) -> bool:
        return address in self.cidr

    def __str__(self) -> str:
        return f"{self.network}/{self.cidr}"


@dataclass(frozen=True, slots=True)
class NamespacedHostname:
    namespace: str
    hostname: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """Where a waypoint or network gateway is reached."""

    destination: NetworkAddress | NamespacedHostname
    hbone_mtls_port: int = HBONE_PORT


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    addresses: tuple[IPAddress, ...]
    service_account: str = "default"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    node: str = ""
    network: str = ""
    hostname: str = ""
    tunnel_protocol: TunnelProtocol = TunnelProtocol.NONE
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_name: str = ""
    workload_type: str = "deployment"
    waypoint: GatewayAddress | None = None
    # "namespace/hostname" -> {service port: target port}
    services: dict[str, dict[int, int]] = field(default_factory=dict, hash=False)
    authorization_policies: tuple[str, ...] = ()
    status: WorkloadStatus = WorkloadStatus.HEALTHY
    cluster_id: str = DEFAULT_CLUSTER_ID
    capacity: int = 1
    network_mode: NetworkMode = NetworkMode.STANDARD
    locality: Locality = Locality()
    # terminates HBONE itself (a sidecar or VM that speaks it), rather than through an agent
    native_tunnel: bool = False

    @property
    def identity(self) -> Identity:
        return Identity(
            self.trust_domain or DEFAULT_TRUST_DOMAIN,
            self.namespace,
            self.service_account or "default",
        )


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[NetworkAddress, ...]
    # service port -> target port (0 = unknown / named port: use the endpoint's own mapping)
    ports: dict[int, int] = field(default_factory=dict, hash=False)
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    # service port -> its application protocol (absent: UNKNOWN)
    app_protocols: dict[int, AppProtocol] = field(default_factory=dict, hash=False)
    # VIPs that are ranges: any address inside reaches the service
    cidr_vips: tuple[NetworkCidr, ...] = ()
    ip_families: IpFamilies | None = None
    load_balancer: LoadBalancer | None = None
    # the service a hostname means when several namespaces define it (istiod marks Kubernetes
    # Services, and the ServiceEntries their owners declare canonical)
    canonical: bool = False

    def app_protocol(self, port: int) -> AppProtocol:
        return self.app_protocols.get(port, AppProtocol.UNKNOWN)

    @property
    def key(self) -> str:
        """The xDS resource name: `namespace/hostname`."""
        return f"{self.namespace}/{self.hostname}"
