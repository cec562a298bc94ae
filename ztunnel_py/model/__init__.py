"""Pure domain types of the mesh (identities, workloads, services, policies) and its shared
vocabulary (socket addresses, well-known ports, pod uids); no I/O."""

from ztunnel_py.model.address import IPAddress, SocketAddr
from ztunnel_py.model.identity import DEFAULT_TRUST_DOMAIN, Identity
from ztunnel_py.model.policy import (
    Action,
    Authorization,
    Cidr,
    Match,
    PolicyScope,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel_py.model.workload import (
    GatewayAddress,
    NamespacedHostname,
    NetworkAddress,
    Service,
    TunnelProtocol,
    Workload,
    WorkloadStatus,
)

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "Action",
    "Authorization",
    "Cidr",
    "GatewayAddress",
    "IPAddress",
    "Identity",
    "Match",
    "NamespacedHostname",
    "NetworkAddress",
    "PolicyScope",
    "Service",
    "ServiceAccountMatch",
    "SocketAddr",
    "StringMatch",
    "StringMatchKind",
    "TunnelProtocol",
    "Workload",
    "WorkloadStatus",
]
