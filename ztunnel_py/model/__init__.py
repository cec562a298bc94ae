"""Pure domain types of the mesh (identities, workloads, services, policies); no I/O."""

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
    IPAddress,
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
    "StringMatch",
    "StringMatchKind",
    "TunnelProtocol",
    "Workload",
    "WorkloadStatus",
]
