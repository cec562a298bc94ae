"""Authorization policies: L4 as the workload API carries them (istio.security.Authorization),
extended with the HTTP attributes a waypoint evaluates (paths, methods, hosts, request headers,
and the end-user attributes of a verified JWT: request principals and claims).

The HTTP attributes never reach a node agent: the control plane sends policies that use them
only to waypoints (in our own L7 type), and rewrites them out of what agents get as istiod does.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, fields


class PolicyScope(enum.Enum):
    GLOBAL = "Global"
    NAMESPACE = "Namespace"
    WORKLOAD_SELECTOR = "WorkloadSelector"


class Action(enum.Enum):
    ALLOW = "Allow"
    DENY = "Deny"
    # waypoints only: a match is logged, never enforced
    AUDIT = "Audit"


class StringMatchKind(enum.Enum):
    EXACT = "Exact"
    PREFIX = "Prefix"
    SUFFIX = "Suffix"
    PRESENCE = "Presence"


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: StringMatchKind
    value: str = ""

    def matches(self, text: str) -> bool:
        if self.kind is StringMatchKind.EXACT:
            return text == self.value
        if self.kind is StringMatchKind.PREFIX:
            return text.startswith(self.value)
        if self.kind is StringMatchKind.SUFFIX:
            return text.endswith(self.value)
        return text != ""


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str


Cidr = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """`when: request.headers[<name>]` with `values` (any of); names are case-insensitive."""

    name: str
    values: tuple[StringMatch, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name.lower())


@dataclass(frozen=True, slots=True)
class RequestPrincipalMatch:
    """`requestPrincipals` / `request.auth.principal` (`iss/sub`, split at the last `/`): the
    verified JWT's `iss` and `sub` claims must both match (istiod's matchers for the value)."""

    issuer: StringMatch
    subject: StringMatch


@dataclass(frozen=True, slots=True)
class ClaimCondition:
    """`request.auth.claims[a][b]` (and `audiences` = claim `aud`, `presenter` = `azp`): the
    claim at `path` of the verified JWT, a string that matches one of `values` or a list with
    such a string."""

    path: tuple[str, ...]
    values: tuple[StringMatch, ...]


@dataclass(frozen=True, slots=True)
class Match:
    """One match: every attribute type that is set must pass (positive any-of, negative none-of)."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[Cidr, ...] = ()
    not_source_ips: tuple[Cidr, ...] = ()
    destination_ips: tuple[Cidr, ...] = ()
    not_destination_ips: tuple[Cidr, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    # HTTP attributes (waypoints only): the request path without its query, the method, the
    # authority (compared case-insensitively), request headers
    paths: tuple[StringMatch, ...] = ()
    not_paths: tuple[StringMatch, ...] = ()
    methods: tuple[StringMatch, ...] = ()
    not_methods: tuple[StringMatch, ...] = ()
    hosts: tuple[StringMatch, ...] = ()
    not_hosts: tuple[StringMatch, ...] = ()
    headers: tuple[HeaderCondition, ...] = ()
    not_headers: tuple[HeaderCondition, ...] = ()
    # end-user attributes (waypoints only): from the JWT the request authentication verified;
    # a request without one matches no positive entry. Claim conditions are ANDed, like headers.
    request_principals: tuple[RequestPrincipalMatch, ...] = ()
    not_request_principals: tuple[RequestPrincipalMatch, ...] = ()
    claims: tuple[ClaimCondition, ...] = ()
    not_claims: tuple[ClaimCondition, ...] = ()
    # computed once: evaluation asks for every match of every policy on every connection
    empty: bool = field(init=False, repr=False, compare=False)
    http: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        computed = ("empty", "http")
        empty = not any(getattr(self, f.name) for f in fields(self) if f.name not in computed)
        object.__setattr__(self, "empty", empty)
        object.__setattr__(self, "http", any(getattr(self, n) for n in HTTP_ATTRIBUTES))

    def is_empty(self) -> bool:
        return self.empty


HTTP_ATTRIBUTES = (
    "paths",
    "not_paths",
    "methods",
    "not_methods",
    "hosts",
    "not_hosts",
    "headers",
    "not_headers",
    "request_principals",
    "not_request_principals",
    "claims",
    "not_claims",
)


@dataclass(frozen=True, slots=True)
class Authorization:
    name: str
    namespace: str
    scope: PolicyScope
    action: Action
    # rules (OR) -> clauses (AND) -> matches (OR)
    rules: tuple[tuple[tuple[Match, ...], ...], ...]
    dry_run: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class WaypointPolicy:
    """A policy a waypoint enforces (an AuthorizationPolicy with `targetRefs`): on every request
    it serves (`services` empty: the Gateway or GatewayClass was targeted) or on requests for
    the listed services (`namespace/hostname`)."""

    policy: Authorization
    services: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.policy.key

    def applies_to(self, service: str) -> bool:
        return not self.services or service in self.services
