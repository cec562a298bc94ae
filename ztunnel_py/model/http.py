"""L7 traffic configuration as a waypoint applies it: routes, backends, per-service settings.

The control plane compiles Istio's and Gateway API's resources (HTTPRoute, VirtualService,
DestinationRule) into these types, one `HttpService` per service a waypoint serves; they travel
to the waypoint in our own xDS type (`ztunnel_py.l7.HttpService`, see `xds/l7convert.py`) and the
filter engine (`http/routing.py`) matches requests against them. Pure data: no I/O.

Semantics follow Envoy's route table as istiod programs it for a waypoint:
- routes are tried in order and the first whose any-of `matches` passes wins (the control plane
  has already ordered them by Gateway API precedence or VirtualService order);
- within a `RouteMatch` every condition set must hold (path, method, each header and query
  parameter, the destination port);
- a route forwards to weighted `backends`, or redirects, or answers directly.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FILTER_NAME",
    "Backend",
    "DirectResponse",
    "Fault",
    "FilterConfig",
    "FilterPhase",
    "HeaderMatch",
    "HeaderOps",
    "HttpService",
    "MatchKind",
    "Mirror",
    "PathMatch",
    "QueryMatch",
    "Redirect",
    "RetryPolicy",
    "Rewrite",
    "Route",
    "RouteMatch",
    "Subset",
]


class MatchKind(enum.Enum):
    EXACT = "Exact"
    PREFIX = "Prefix"
    SUFFIX = "Suffix"
    REGEX = "Regex"
    PRESENT = "Present"


def _compile(kind: MatchKind, value: str) -> re.Pattern[str] | None:
    if kind is not MatchKind.REGEX:
        return None
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression {value!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class PathMatch:
    """Path conditions. PREFIX is Gateway API's: segment-wise (`/api` matches `/api` and
    `/api/x`, not `/apix`), unless `segment_prefix` is False (VirtualService's plain string
    prefix)."""

    kind: MatchKind
    value: str
    segment_prefix: bool = True
    ignore_case: bool = False
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.kind, self.value))

    def matches(self, path: str) -> bool:
        if self.ignore_case:
            path = path.lower()
            value = self.value.lower()
        else:
            value = self.value
        if self.kind is MatchKind.EXACT:
            return path == value
        if self.kind is MatchKind.PREFIX:
            if not self.segment_prefix:
                return path.startswith(value)
            # element-wise, a trailing "/" in the value ignored: "/abc/" matches "/abc" too
            base = value.rstrip("/")
            return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")
        if self.kind is MatchKind.REGEX:
            assert self.pattern is not None
            return self.pattern.fullmatch(path) is not None
        return True


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header condition; `invert` makes it a must-not (VirtualService withoutHeaders)."""

    name: str
    kind: MatchKind
    value: str = ""
    invert: bool = False
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name.lower())
        object.__setattr__(self, "pattern", _compile(self.kind, self.value))

    def value_matches(self, value: str | None) -> bool:
        if value is None:
            return False
        kind = self.kind
        if kind is MatchKind.EXACT:
            return value == self.value
        if kind is MatchKind.PREFIX:
            return value.startswith(self.value)
        if kind is MatchKind.SUFFIX:
            return value.endswith(self.value)
        if kind is MatchKind.REGEX:
            assert self.pattern is not None
            return self.pattern.fullmatch(value) is not None
        return True


@dataclass(frozen=True, slots=True)
class QueryMatch:
    name: str
    kind: MatchKind
    value: str = ""
    pattern: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.kind, self.value))

    def value_matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.kind is MatchKind.EXACT:
            return value == self.value
        if self.kind is MatchKind.PREFIX:
            return value.startswith(self.value)
        if self.kind is MatchKind.SUFFIX:
            return value.endswith(self.value)
        if self.kind is MatchKind.REGEX:
            assert self.pattern is not None
            return self.pattern.fullmatch(value) is not None
        return True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: PathMatch | None = None
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()
    # the destination (service) port the request arrived for; None: any
    port: int | None = None


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header edits in Envoy's order: remove, then set (replace), then add (append)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Backend:
    """A weighted destination: a service (`namespace/hostname`) and port, optionally a subset.

    An empty hostname (`<namespace>/`) is a backend the control plane could not resolve (an
    HTTPRoute backendRef to a missing or forbidden service): its share of the traffic gets
    `500`, as Gateway API requires and Envoy answers for an unknown cluster on such routes.
    """

    service: str
    port: int
    weight: int = 1
    subset: str = ""
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()

    @property
    def unresolved(self) -> bool:
        return self.service.endswith("/")

    @property
    def cluster(self) -> str:
        """Envoy-style cluster name (`outbound|port|subset|hostname`), used in logs and
        metrics."""
        hostname = self.service.partition("/")[2]
        return f"outbound|{self.port}|{self.subset}|{hostname}"


@dataclass(frozen=True, slots=True)
class Redirect:
    """An HTTP redirect; unset parts keep the request's."""

    status: int = 302
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    # replace the matched prefix instead of the whole path
    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    path: str | None = None
    # replace the matched prefix (Gateway API ReplacePrefixMatch, VirtualService uri rewrite
    # of a prefix match)
    prefix: str | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    per_try_timeout: float | None = None
    # Envoy retry_on conditions ("5xx", "gateway-error", "connect-failure", "refused-stream",
    # "reset", "retriable-status-codes", ...)
    retry_on: tuple[str, ...] = ()
    retriable_status_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Mirror:
    backend: Backend
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection (VirtualService `fault`): delay and/or abort a share of requests."""

    delay_percent: float = 0.0
    delay: float = 0.0
    abort_percent: float = 0.0
    abort_status: int = 0
    # a gRPC status to abort gRPC requests with (0: abort with `abort_status`)
    abort_grpc_status: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    backends: tuple[Backend, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    # seconds; None: no timeout (Istio's default for VirtualService and HTTPRoute alike)
    timeout: float | None = None
    retries: RetryPolicy | None = None
    mirrors: tuple[Mirror, ...] = ()
    fault: Fault | None = None
    # where it came from, for logs and config dumps ("HTTPRoute apps/echo rule 0")
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Subset:
    """A DestinationRule subset, resolved by the control plane to the workloads it selects."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    workload_uids: frozenset[str] = frozenset()


# An entry point name as the waypoint looks a user filter up (no spaces, '=' or ':').
FILTER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class FilterPhase(enum.Enum):
    """Where a user filter runs in the chain (Istio's WasmPlugin `phase`): before the built-in
    authentication, before authorization, before telemetry, or (UNSPECIFIED) last, just before
    routing."""

    AUTHN = "AUTHN"
    AUTHZ = "AUTHZ"
    STATS = "STATS"
    UNSPECIFIED = "UNSPECIFIED_PHASE"


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """A user HTTP filter enabled for a service: the entry point `name` (group
    `ztunnel_py.http_filters`), its chain position and its configuration (a JSON object)."""

    name: str
    phase: FilterPhase = FilterPhase.UNSPECIFIED
    # within a phase, higher priorities run first
    priority: int = 0
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # the filter cannot be loaded or configured: skip it (True) or fail every request it would
    # have seen with a 500 (False, Istio's FAIL_CLOSE default)
    fail_open: bool = False
    # the resource it came from ("WasmPlugin apps/ratelimit")
    origin: str = ""


@dataclass(frozen=True, slots=True)
class HttpService:
    """Everything a waypoint applies to requests for one service (`namespace/hostname`)."""

    service: str
    routes: tuple[Route, ...] = ()
    # subsets of every service the routes reference, by `namespace/hostname` then name
    subsets: tuple[tuple[str, tuple[Subset, ...]], ...] = ()
    # where the routes came from ("HTTPRoute apps/echo", "VirtualService apps/echo")
    sources: tuple[str, ...] = ()
    # user filters, in chain order: by phase, then priority (highest first)
    filters: tuple[FilterConfig, ...] = ()

    @property
    def key(self) -> str:
        return self.service

    def subset(self, service: str, name: str) -> Subset | None:
        for svc, subsets in self.subsets:
            if svc == service:
                for s in subsets:
                    if s.name == name:
                        return s
        return None
