"""L4 authorization policies as the workload API carries them (istio.security.Authorization)."""

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
    # computed once: evaluation asks for every match of every policy on every connection
    empty: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        empty = not any(getattr(self, f.name) for f in fields(self) if f.name != "empty")
        object.__setattr__(self, "empty", empty)

    def is_empty(self) -> bool:
        return self.empty


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
