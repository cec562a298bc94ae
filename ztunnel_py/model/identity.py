"""SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse a SPIFFE URI; exactly `spiffe://td/ns/<ns>/sa/<sa>` as ztunnel requires."""
        if not uri.startswith(SPIFFE_PREFIX):
            raise ValueError(f"identity {uri!r} is not a spiffe:// URI")
        parts = uri[len(SPIFFE_PREFIX) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise ValueError(
                f"identity {uri!r} is not of the form spiffe://<trust domain>/ns/<ns>/sa/<sa>"
            )
        td, _, ns, _, sa = parts
        if not td or not ns or not sa:
            raise ValueError(f"identity {uri!r} has an empty trust domain, namespace or account")
        return cls(td, ns, sa)

    @property
    def principal(self) -> str:
        """The identity without `spiffe://`, as AuthorizationPolicy principals are written."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return SPIFFE_PREFIX + self.principal
