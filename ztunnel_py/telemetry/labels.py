"""Istio's traffic label set (ztunnel's `CommonTrafficLabels`), built from model types.

Label names and their order are a contract with Istio's dashboards and Kiali (docs/istio-compat.md,
"Metrics").
Missing values render as `unknown`; `source_principal` comes only from an mTLS identity: the
verified peer's on inbound, the one the agent presents for the source on outbound HBONE, never from
the source workload's xDS entry alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ztunnel_py.model import Identity, Service, Workload

UNKNOWN = "unknown"

# reporters
SOURCE = "source"
DESTINATION = "destination"
WAYPOINT = "waypoint"
REPORTERS = (SOURCE, DESTINATION, WAYPOINT)

# connection_security_policy
MUTUAL_TLS = "mutual_tls"
SECURITY_POLICIES = (MUTUAL_TLS, UNKNOWN)

# response_flags
NO_FLAGS = "-"
DENY = "DENY"
CONNECT = "CONNECT"
TLS_FAILURE = "TLS_FAILURE"
H2_HANDSHAKE_FAILURE = "H2_HANDSHAKE_FAILURE"
NETWORK_POLICY = "NETWORK_POLICY"
IDENTITY_ERROR = "IDENTITY_ERROR"
CERT_REVOKED = "CERT_REVOKED"
RESPONSE_FLAGS = (
    NO_FLAGS,
    DENY,
    CONNECT,
    TLS_FAILURE,
    H2_HANDSHAKE_FAILURE,
    NETWORK_POLICY,
    IDENTITY_ERROR,
    CERT_REVOKED,
)

TRAFFIC_LABEL_NAMES = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
)


def _v(value: str) -> str:
    return value or UNKNOWN


@dataclass(frozen=True, slots=True)
class TrafficLabels:
    """One connection's labels, plus the pod names the access log shows (not labels)."""

    reporter: str
    source_workload: str = UNKNOWN
    source_canonical_service: str = UNKNOWN
    source_canonical_revision: str = UNKNOWN
    source_workload_namespace: str = UNKNOWN
    source_principal: str = UNKNOWN
    source_app: str = UNKNOWN
    source_version: str = UNKNOWN
    source_cluster: str = UNKNOWN
    destination_service: str = UNKNOWN
    destination_service_namespace: str = UNKNOWN
    destination_service_name: str = UNKNOWN
    destination_workload: str = UNKNOWN
    destination_canonical_service: str = UNKNOWN
    destination_canonical_revision: str = UNKNOWN
    destination_workload_namespace: str = UNKNOWN
    destination_principal: str = UNKNOWN
    destination_app: str = UNKNOWN
    destination_version: str = UNKNOWN
    destination_cluster: str = UNKNOWN
    request_protocol: str = "tcp"
    response_flags: str = NO_FLAGS
    connection_security_policy: str = UNKNOWN
    source_pod: str = ""
    destination_pod: str = ""

    def __post_init__(self) -> None:
        if self.reporter not in REPORTERS:
            raise ValueError(f"reporter {self.reporter!r} is not one of {REPORTERS}")
        if self.response_flags not in RESPONSE_FLAGS:
            raise ValueError(f"response flags {self.response_flags!r} not in {RESPONSE_FLAGS}")
        if self.connection_security_policy not in SECURITY_POLICIES:
            raise ValueError(f"security policy {self.connection_security_policy!r} unknown")

    @classmethod
    def build(
        cls,
        reporter: str,
        *,
        source: Workload | None = None,
        source_identity: Identity | None = None,
        destination: Workload | None = None,
        destination_service: Service | None = None,
        mtls: bool = False,
    ) -> TrafficLabels:
        """Labels as ztunnel derives them.

        `source_identity` is the mTLS identity of the source: the verified peer's (inbound) or the
        one presented for the source (outbound HBONE). It fills the source namespace when the
        source workload is unknown, and is the only source of `source_principal`.
        """
        f: dict[str, str] = {}
        if source_identity is not None:
            f["source_workload_namespace"] = source_identity.namespace
            f["source_principal"] = str(source_identity)
        if source is not None:
            f |= {
                "source_workload": _v(source.workload_name),
                "source_canonical_service": _v(source.canonical_name),
                "source_canonical_revision": _v(source.canonical_revision),
                "source_workload_namespace": _v(source.namespace),
                "source_app": _v(source.canonical_name),
                "source_version": _v(source.canonical_revision),
                "source_cluster": _v(source.cluster_id),
                "source_pod": source.name,
            }
        if destination is not None:
            f |= {
                "destination_workload": _v(destination.workload_name),
                "destination_canonical_service": _v(destination.canonical_name),
                "destination_canonical_revision": _v(destination.canonical_revision),
                "destination_workload_namespace": _v(destination.namespace),
                "destination_principal": str(destination.identity),
                "destination_app": _v(destination.canonical_name),
                "destination_version": _v(destination.canonical_revision),
                "destination_cluster": _v(destination.cluster_id),
                "destination_pod": destination.name,
            }
        if destination_service is not None:
            f |= {
                "destination_service": _v(destination_service.hostname),
                "destination_service_namespace": _v(destination_service.namespace),
                "destination_service_name": _v(destination_service.name),
            }
        policy = MUTUAL_TLS if mtls else UNKNOWN
        return cls(reporter, connection_security_policy=policy, **f)

    def with_flags(self, response_flags: str) -> TrafficLabels:
        return dataclasses.replace(self, response_flags=response_flags)

    def values(self) -> tuple[str, ...]:
        """Label values in TRAFFIC_LABEL_NAMES order."""
        return tuple(getattr(self, name) for name in TRAFFIC_LABEL_NAMES)

    @property
    def mtls(self) -> bool:
        return self.connection_security_policy == MUTUAL_TLS
