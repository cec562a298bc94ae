"""Authorization: evaluate policies against one inbound connection (agents) or request
(waypoints: the same evaluator, with the request's HTTP attributes).

Pure functions, exactly ztunnel's semantics (`src/rbac.rs`, `src/state.rs::assert_rbac`):

- dry-run policies (and, at waypoints, AUDIT policies) are evaluated and reported, never
  enforced;
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

HTTP attributes (Envoy's RBAC as istiod programs it for a waypoint): `paths` against the
normalized path without its query, `methods` against the method as sent (case-sensitive),
`hosts` against the authority case-insensitively (its port included, as Envoy does), header
conditions against the request header's values joined with `,`. A match that sets an HTTP
attribute never matches a connection without HTTP attributes (an agent's L4 decision).

End-user attributes (istiod's matchers on the `jwt_authn` payload): a request principal matches
when the verified token's `iss` and `sub` are strings that match its issuer and subject; a claim
condition when the claim at its path (through nested objects) is a string that one of its values
matches, or a list holding such a string; numbers, booleans and objects never match. Without a
verified token nothing matches, so `notRequestPrincipals: ["*"]` holds for anonymous requests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ztunnel_py.model import (
    Action,
    Authorization,
    Cidr,
    Identity,
    IPAddress,
    Match,
    ServiceAccountMatch,
    StringMatch,
    StringMatchKind,
)
from ztunnel_py.model.address import canonical_ip
from ztunnel_py.model.policy import ClaimCondition, HeaderCondition, RequestPrincipalMatch


@dataclass(frozen=True, slots=True)
class HttpAttributes:
    """The request attributes a waypoint's policies may test."""

    method: str
    # normalized, without the query string
    path: str
    # the :authority / Host as sent
    host: str
    # request header -> its values joined with "," (lower-case names)
    headers: Mapping[str, str]
    # the payload of the JWT the request authentication verified (None: no verified token),
    # with space-delimited claims already split into lists
    jwt: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    src_ip: IPAddress
    src_identity: Identity | None
    dst_ip: IPAddress
    dst_port: int
    http: HttpAttributes | None = None


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

Rule = tuple[tuple[Match, ...], ...]


class PolicySet:
    """The policies guarding one workload, compiled once for the many connections they decide.

    Iterating it gives the policies in the order they were given; `evaluate` decides one
    connection. Evaluation looks only at the rules that could match the connection (see
    `_RuleIndex`), so its cost follows the number of candidate rules, not of policies in scope.
    """

    __slots__ = ("_allow", "_deny", "_dry_run", "policies")

    def __init__(self, policies: Iterable[Authorization]) -> None:
        self.policies = tuple(policies)
        dry_runs: list[Authorization] = []
        denies: list[Authorization] = []
        allows: list[Authorization] = []
        for p in self.policies:
            # AUDIT (waypoints) is reported like a dry run and never decides
            if p.dry_run or p.action is Action.AUDIT:
                dry_runs.append(p)
            elif p.action is Action.DENY:
                denies.append(p)
            else:
                allows.append(p)
        self._dry_run = _RuleIndex(dry_runs)
        self._deny = _RuleIndex(denies)
        self._allow = _RuleIndex(allows)

    def __iter__(self) -> Iterator[Authorization]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def evaluate(self, conn: Connection) -> Decision:
        subject = _Subject(conn)
        dry_run = tuple(DryRunMatch(p.key, p.action) for p in self._dry_run.matching(subject))
        deny = self._deny.first_match(subject)
        if deny is not None:
            return Decision(False, deny.key, f"explicitly denied by: {deny.key}", dry_run)
        if not self._allow.policies:
            return Decision(True, None, NO_ALLOW_POLICIES, dry_run)
        allow = self._allow.first_match(subject)
        if allow is not None:
            return Decision(True, allow.key, f"allowed by: {allow.key}", dry_run)
        return Decision(False, None, NONE_ALLOWED, dry_run)


def evaluate(policies: Iterable[Authorization], conn: Connection) -> Decision:
    """Decide one connection against `policies` (compile a `PolicySet` to decide many)."""
    return PolicySet(policies).evaluate(conn)


class _Subject:
    """The connection's attributes, computed once per evaluation."""

    __slots__ = (
        "dst_ip",
        "dst_port",
        "host",
        "http",
        "identity",
        "namespace",
        "principal",
        "src_ip",
    )

    def __init__(self, conn: Connection) -> None:
        self.http = conn.http
        self.host = conn.http.host.lower() if conn.http is not None else ""
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
    return any(_rule_matches(rule, s) for rule in policy.rules)


def _rule_matches(rule: Rule, s: _Subject) -> bool:
    return all(not clause or any(_match(m, s) for m in clause) for clause in rule)


class _RuleIndex:
    """The rules of some policies, each filed where a connection that could match it finds it.

    A rule matches only if every clause does, and a clause only if one of its matches does;
    a match with a positive attribute list (principals, namespaces, service accounts, source or
    destination CIDRs, ports) passes only for a connection that hits one of the entries. So a
    clause whose every live match lists, say, principals can only pass for a connection whose
    principal hits one of them: the rule is filed under those principals, and a connection
    looks it up by its own. Each rule is filed under one attribute of one clause, the first in
    `_file`'s order that every live match of the clause constrains; rules with no such clause
    are candidates for every connection, and rules that can never match are not filed.

    Candidates are checked in rule order, which is policy order, so the first match found is
    the first matching policy, exactly as a scan of the whole list would find it.
    """

    __slots__ = (
        "_accounts",
        "_always",
        "_destination_ips",
        "_guards",
        "_namespaces",
        "_ports",
        "_principals",
        "_rules",
        "_source_ips",
        "policies",
    )

    def __init__(self, policies: Sequence[Authorization]) -> None:
        self.policies = policies
        # rule id -> (position of its policy, rule); ids grow with policy order
        self._rules: list[tuple[int, Rule]] = []
        self._always: list[int] = []
        self._accounts = _KeyIndex()
        self._principals = _StringIndex()
        self._namespaces = _StringIndex()
        self._source_ips = _CidrIndex()
        self._ports = _KeyIndex()
        self._destination_ips = _CidrIndex()
        # The attributes a rule may be filed under (a Match field and its index), the most
        # selective first.
        self._guards: tuple[tuple[str, _Filing], ...] = (
            ("service_accounts", self._accounts),
            ("principals", self._principals),
            ("namespaces", self._namespaces),
            ("source_ips", self._source_ips),
            ("destination_ports", self._ports),
            ("destination_ips", self._destination_ips),
        )
        for position, policy in enumerate(policies):
            for rule in policy.rules:
                self._file(len(self._rules), rule)
                self._rules.append((position, rule))

    def _file(self, rule_id: int, rule: Rule) -> None:
        best: tuple[int, list[Match]] | None = None
        for clause in rule:
            if not clause:
                continue
            live = [m for m in clause if not m.empty]
            if not live:
                return  # this clause never passes, so the rule never matches
            common = _ALL_GUARDS
            for m in live:
                common &= _guard_mask(m)
            if common:
                # The lowest bit is the most selective attribute every live match sets.
                rank = (common & -common).bit_length() - 1
                if best is None or rank < best[0]:
                    best = (rank, live)
        if best is None:
            self._always.append(rule_id)
            return
        name, index = self._guards[best[0]]
        for m in best[1]:
            for entry in getattr(m, name):
                index.add(entry, rule_id)

    def _candidates(self, s: _Subject) -> list[int]:
        found = list(self._always)
        if s.identity is not None:
            account = ServiceAccountMatch(s.identity.namespace, s.identity.service_account)
            self._accounts.collect(account, found)
        if s.principal is not None:
            self._principals.collect(s.principal, found)
        self._namespaces.collect(s.namespace, found)
        self._source_ips.collect(s.src_ip, found)
        self._ports.collect(s.dst_port, found)
        self._destination_ips.collect(s.dst_ip, found)
        # One rule may be filed under several entries the connection hits.
        return sorted(set(found))

    def first_match(self, s: _Subject) -> Authorization | None:
        rules = self._rules
        for rule_id in self._candidates(s):
            position, rule = rules[rule_id]
            if _rule_matches(rule, s):
                return self.policies[position]
        return None

    def matching(self, s: _Subject) -> list[Authorization]:
        """Every matching policy, in order."""
        positions: list[int] = []
        for rule_id in self._candidates(s):
            position, rule = self._rules[rule_id]
            if (not positions or positions[-1] != position) and _rule_matches(rule, s):
                positions.append(position)
        return [self.policies[p] for p in positions]


_ALL_GUARDS = 0b111111


def _guard_mask(m: Match) -> int:
    """Bit i set: `m` sets the attribute of `_RuleIndex._guards[i]` (same order)."""
    return (
        (1 if m.service_accounts else 0)
        | (2 if m.principals else 0)
        | (4 if m.namespaces else 0)
        | (8 if m.source_ips else 0)
        | (16 if m.destination_ports else 0)
        | (32 if m.destination_ips else 0)
    )


class _Filing(Protocol):
    def add(self, entry: Any, rule_id: int) -> None: ...


class _KeyIndex:
    """Entries compared by equality (service accounts, ports)."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[Hashable, list[int]] = {}

    def add(self, key: Hashable, rule_id: int) -> None:
        self._by_key.setdefault(key, []).append(rule_id)

    def collect(self, key: Hashable, found: list[int]) -> None:
        found.extend(self._by_key.get(key, ()))


class _StringIndex:
    """String matches by value: exact ones in a dict, prefix and suffix ones in a dict per
    length (a text is looked up once per distinct length), presence ones in a list."""

    __slots__ = ("_exact", "_prefixes", "_present", "_suffixes")

    def __init__(self) -> None:
        self._exact: dict[str, list[int]] = {}
        self._prefixes: dict[int, dict[str, list[int]]] = {}
        self._suffixes: dict[int, dict[str, list[int]]] = {}
        self._present: list[int] = []

    def add(self, m: StringMatch, rule_id: int) -> None:
        if m.kind is StringMatchKind.EXACT:
            self._exact.setdefault(m.value, []).append(rule_id)
        elif m.kind is StringMatchKind.PREFIX:
            by_value = self._prefixes.setdefault(len(m.value), {})
            by_value.setdefault(m.value, []).append(rule_id)
        elif m.kind is StringMatchKind.SUFFIX:
            by_value = self._suffixes.setdefault(len(m.value), {})
            by_value.setdefault(m.value, []).append(rule_id)
        else:
            self._present.append(rule_id)

    def collect(self, text: str, found: list[int]) -> None:
        found.extend(self._exact.get(text, ()))
        size = len(text)
        for length, by_value in self._prefixes.items():
            if length <= size:
                found.extend(by_value.get(text[:length], ()))
        for length, by_value in self._suffixes.items():
            if length <= size:
                found.extend(by_value.get(text[size - length :], ()))
        if text:
            found.extend(self._present)


class _CidrIndex:
    """CIDRs by (IP version, prefix length) and network: an address is looked up once per
    distinct prefix length of its version."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int, int], dict[int, list[int]]] = {}

    def add(self, cidr: Cidr, rule_id: int) -> None:
        host_bits = cidr.max_prefixlen - cidr.prefixlen
        table = self._tables.setdefault((cidr.version, cidr.prefixlen, host_bits), {})
        table.setdefault(int(cidr.network_address), []).append(rule_id)

    def collect(self, address: IPAddress, found: list[int]) -> None:
        value = int(address)
        version = address.version
        for (table_version, _, host_bits), table in self._tables.items():
            if table_version == version:
                found.extend(table.get(value >> host_bits << host_bits, ()))


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
    if m.not_destination_ips and any(s.dst_ip in c for c in m.not_destination_ips):
        return False
    return not m.http or _http_match(m, s)


def _http_match(m: Match, s: _Subject) -> bool:
    http = s.http
    if http is None:
        return False
    if m.paths and not any(p.matches(http.path) for p in m.paths):
        return False
    if m.not_paths and any(p.matches(http.path) for p in m.not_paths):
        return False
    if m.methods and not any(x.matches(http.method) for x in m.methods):
        return False
    if m.not_methods and any(x.matches(http.method) for x in m.not_methods):
        return False
    if m.hosts and not any(_host(h, s.host) for h in m.hosts):
        return False
    if m.not_hosts and any(_host(h, s.host) for h in m.not_hosts):
        return False
    if m.headers and not all(_header(c, http) for c in m.headers):
        return False
    if m.not_headers and any(_header(c, http) for c in m.not_headers):
        return False
    jwt = http.jwt
    if m.request_principals and not any(_request_principal(p, jwt) for p in m.request_principals):
        return False
    if m.not_request_principals and any(
        _request_principal(p, jwt) for p in m.not_request_principals
    ):
        return False
    if m.claims and not all(_claim(c, jwt) for c in m.claims):
        return False
    return not (m.not_claims and any(_claim(c, jwt) for c in m.not_claims))


def _host(m: StringMatch, host: str) -> bool:
    return StringMatch(m.kind, m.value.lower()).matches(host)


def _header(c: HeaderCondition, http: HttpAttributes) -> bool:
    value = http.headers.get(c.name)
    return value is not None and any(v.matches(value) for v in c.values)


def _request_principal(p: RequestPrincipalMatch, jwt: Mapping[str, Any] | None) -> bool:
    if jwt is None:
        return False
    issuer, subject = jwt.get("iss"), jwt.get("sub")
    return (
        isinstance(issuer, str)
        and isinstance(subject, str)
        and p.issuer.matches(issuer)
        and p.subject.matches(subject)
    )


def _claim(c: ClaimCondition, jwt: Mapping[str, Any] | None) -> bool:
    value: Any = jwt
    for key in c.path:
        if not isinstance(value, Mapping):
            return False
        value = value.get(key)
    if isinstance(value, str):
        return any(v.matches(value) for v in c.values)
    if isinstance(value, list):
        return any(isinstance(e, str) and v.matches(e) for e in value for v in c.values)
    return False


def _account(a: ServiceAccountMatch, s: _Subject) -> bool:
    # The trust domain is ignored, as in ztunnel.
    return (
        s.identity is not None
        and s.identity.namespace == a.namespace
        and s.identity.service_account == a.service_account
    )


def _principal(p: StringMatch, s: _Subject) -> bool:
    return s.principal is not None and p.matches(s.principal)
