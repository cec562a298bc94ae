"""L4 authorization: evaluate a workload's policies against one inbound connection.

Pure functions, exactly ztunnel's semantics (`src/rbac.rs`, `src/state.rs::assert_rbac`):

- dry-run policies are evaluated and reported, never enforced;
- any matching DENY rejects ("explicitly denied by: ns/name");
- with no ALLOW policy the connection is allowed; otherwise a matching ALLOW allows it and
  anything else is rejected ("allow policies exist, but none allowed").

A policy matches if any rule matches; a rule if all its clauses match (no clauses: match); a
clause if any of its matches match (no matches: match); a Match with no field set never matches,
and neither does a policy with no rules. Within a Match every attribute that is set must pass:
one positive entry matches and no negative entry does.

Attributes come from the peer's mTLS identity (absent for plaintext), the source IP, and the
destination IP and port (the upstream target port, never 15008). Principals are compared without
`spiffe://`, and with no identity no positive principal matches. Namespaces are compared against
the identity's namespace, or the empty string without one, as ztunnel does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ztunnel_py.model import (
    Action,
    Authorization,
    Identity,
    IPAddress,
    Match,
    ServiceAccountMatch,
    StringMatch,
)
from ztunnel_py.model.workload import canonical_ip


@dataclass(frozen=True, slots=True)
class Connection:
    src_ip: IPAddress
    src_identity: Identity | None
    dst_ip: IPAddress
    dst_port: int


@dataclass(frozen=True, slots=True)
class DryRunMatch:
    policy_key: str
    action: Action


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # the policy that decided (the matching DENY or ALLOW), None for the defaults
    policy_key: str | None
    reason: str
    dry_run_matches: tuple[DryRunMatch, ...] = ()


NO_ALLOW_POLICIES = "no allow policies"
NONE_ALLOWED = "allow policies exist, but none allowed"


def evaluate(policies: Iterable[Authorization], conn: Connection) -> Decision:
    subject = _Subject(conn)
    dry_runs: list[Authorization] = []
    denies: list[Authorization] = []
    allows: list[Authorization] = []
    for p in policies:
        if p.dry_run:
            dry_runs.append(p)
        elif p.action is Action.DENY:
            denies.append(p)
        else:
            allows.append(p)
    dry_run = tuple(DryRunMatch(p.key, p.action) for p in dry_runs if _policy_matches(p, subject))
    for p in denies:
        if _policy_matches(p, subject):
            return Decision(False, p.key, f"explicitly denied by: {p.key}", dry_run)
    if not allows:
        return Decision(True, None, NO_ALLOW_POLICIES, dry_run)
    for p in allows:
        if _policy_matches(p, subject):
            return Decision(True, p.key, f"allowed by: {p.key}", dry_run)
    return Decision(False, None, NONE_ALLOWED, dry_run)


class _Subject:
    """The connection's attributes, computed once per evaluation."""

    __slots__ = ("dst_ip", "dst_port", "identity", "namespace", "principal", "src_ip")

    def __init__(self, conn: Connection) -> None:
        self.src_ip = canonical_ip(conn.src_ip)
        self.dst_ip = canonical_ip(conn.dst_ip)
        self.dst_port = conn.dst_port
        self.identity = conn.src_identity
        self.principal = conn.src_identity.principal if conn.src_identity else None
        self.namespace = conn.src_identity.namespace if conn.src_identity else ""


def policy_matches(policy: Authorization, conn: Connection) -> bool:
    """Whether `policy` matches `conn`, ignoring its action and dry-run flag."""
    return _policy_matches(policy, _Subject(conn))


def _policy_matches(policy: Authorization, s: _Subject) -> bool:
    return any(
        all(not clause or any(_match(m, s) for m in clause) for clause in rule)
        for rule in policy.rules
    )


def _match(m: Match, s: _Subject) -> bool:
    # Cheapest attributes first; written out (no lambdas) because with thousands of policies
    # this runs tens of thousands of times per connection.
    if m.empty:
        return False
    port = s.dst_port
    if m.destination_ports and port not in m.destination_ports:
        return False
    if m.not_destination_ports and port in m.not_destination_ports:
        return False
    if m.principals and not any(_principal(p, s) for p in m.principals):
        return False
    if m.not_principals and any(_principal(p, s) for p in m.not_principals):
        return False
    if m.namespaces and not any(n.matches(s.namespace) for n in m.namespaces):
        return False
    if m.not_namespaces and any(n.matches(s.namespace) for n in m.not_namespaces):
        return False
    if m.service_accounts and not any(_account(a, s) for a in m.service_accounts):
        return False
    if m.not_service_accounts and any(_account(a, s) for a in m.not_service_accounts):
        return False
    if m.source_ips and not any(s.src_ip in c for c in m.source_ips):
        return False
    if m.not_source_ips and any(s.src_ip in c for c in m.not_source_ips):
        return False
    if m.destination_ips and not any(s.dst_ip in c for c in m.destination_ips):
        return False
    return not (m.not_destination_ips and any(s.dst_ip in c for c in m.not_destination_ips))


def _account(a: ServiceAccountMatch, s: _Subject) -> bool:
    # The trust domain is ignored, as in ztunnel.
    return (
        s.identity is not None
        and s.identity.namespace == a.namespace
        and s.identity.service_account == a.service_account
    )


def _principal(p: StringMatch, s: _Subject) -> bool:
    return s.principal is not None and p.matches(s.principal)
