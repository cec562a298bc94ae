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

Where a backend's requests go once routed is its cluster's `TrafficPolicy` (DestinationRule
`trafficPolicy`, resolved per service, subset and port by the control plane): the load
balancer, the connection pool limits (Envoy's circuit breakers) and outlier detection, with
Istio's defaults when a field is unset (least request, no limits, no outlier detection).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.model.telemetry import TelemetryConfig

__all__ = [
    "DEFAULT_MAGLEV_SIZE",
    "DEFAULT_RING_SIZE",
    "DEFAULT_TRAFFIC_POLICY",
    "FILTER_NAME",
    "MAX_MAGLEV_SIZE",
    "MAX_RING_SIZE",
    "UNLIMITED",
    "Backend",
    "ClusterPolicy",
    "ConnectionPool",
    "ConsistentHash",
    "DirectResponse",
    "Fault",
    "FilterConfig",
    "FilterPhase",
    "HashSource",
    "HashTable",
    "HeaderMatch",
    "HeaderOps",
    "HttpService",
    "LoadBalancer",
    "LoadBalancerKind",
    "MatchKind",
    "Mirror",
    "OutlierDetection",
    "PathMatch",
    "QueryMatch",
    "Redirect",
    "RetryBudget",
    "RetryPolicy",
    "Rewrite",
    "Route",
    "RouteMatch",
    "Subset",
    "TrafficPolicy",
    "valid_maglev_size",
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


# A connection pool limit of 0 means none (Istio sends Envoy 2^32-1 for an unset one).
UNLIMITED = 0


class LoadBalancerKind(enum.Enum):
    """DestinationRule `loadBalancer.simple` (LEAST_CONN is the deprecated name of
    LEAST_REQUEST). PASSTHROUGH sends each request to the address the client dialled, as
    istiod's ORIGINAL_DST cluster does."""

    LEAST_REQUEST = "LEAST_REQUEST"
    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"


class HashSource(enum.Enum):
    """What a consistent hash is computed over (DestinationRule `consistentHash`)."""

    HEADER = "HEADER"
    COOKIE = "COOKIE"
    SOURCE_IP = "SOURCE_IP"
    QUERY_PARAMETER = "QUERY_PARAMETER"


class HashTable(enum.Enum):
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


# Envoy's defaults: a ring of at least 1024 entries, a Maglev table of 65537 (a prime); its
# bounds: a ring of at most 8M entries, a Maglev table size below 5000011 (Istio's check).
DEFAULT_RING_SIZE = 1024
DEFAULT_MAGLEV_SIZE = 65537
MAX_RING_SIZE = 8 * 1024 * 1024
MAX_MAGLEV_SIZE = 5000011


def valid_maglev_size(n: int) -> bool:
    """A Maglev table size must be a prime (each entry's permutation must visit every slot)
    below `MAX_MAGLEV_SIZE`."""
    if not 2 <= n < MAX_MAGLEV_SIZE:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """Requests with the same key go to the same endpoint while the endpoints stay the same,
    and mostly still when endpoints come and go (a ring or Maglev table, never a modulo).

    `name` is the header (lower case), cookie or query parameter. A cookie hash with a
    `cookie_ttl` makes the proxy set the cookie on the response when the request had none
    (0: a session cookie); without a ttl a request lacking the cookie is not hashed. A request
    without its key is balanced at random."""

    source: HashSource
    name: str = ""
    cookie_path: str = ""
    cookie_ttl: float | None = None
    table: HashTable = HashTable.RING_HASH
    # the ring's minimum size, or the Maglev table's size (a prime)
    table_size: int = DEFAULT_RING_SIZE


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    kind: LoadBalancerKind = LoadBalancerKind.LEAST_REQUEST
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """DestinationRule `connectionPool`, Envoy's circuit breakers for one cluster: limits of 0
    are none. Overflowing `max_connections` queues requests as pending; overflowing
    `max_pending_requests` or `max_requests` (upstream requests in flight, any protocol)
    answers `503` flag `UO`; `max_retries` bounds the retries in flight (a retry over it is not
    made). `max_requests_per_connection` closes a connection after that many requests;
    `idle_timeout` and `connect_timeout` of None keep the proxy's defaults."""

    max_connections: int = UNLIMITED
    connect_timeout: float | None = None
    max_pending_requests: int = UNLIMITED
    max_requests: int = UNLIMITED
    max_requests_per_connection: int = UNLIMITED
    max_retries: int = UNLIMITED
    idle_timeout: float | None = None
    max_connection_duration: float | None = None


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """TrafficPolicy `retryBudget`: retries in flight may be `percent` of the requests in
    flight, and at least `min_concurrency`; it replaces `max_retries`."""

    percent: float = 20.0
    min_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """DestinationRule `outlierDetection` with Envoy's defaults, as istiod programs it.

    An endpoint that answers `consecutive_5xx` 5xx in a row (0: never), or
    `consecutive_gateway_errors` 502/503/504 in a row (0: never), is ejected for
    `base_ejection_time` times the number of its ejections (at most 300 s, and the multiplier
    shrinks again while it stays healthy); an ejection only happens while the ejected share
    stays within `max_ejection_percent`. Ejections end at the `interval` sweeps. Connection
    failures and resets count as 503, timeouts as 504, unless `split_local_origin` counts them
    separately (`consecutive_local_origin`). When fewer than `min_health_percent` of the
    endpoints are healthy, ejections are ignored (Envoy's panic threshold; 0: never)."""

    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    split_local_origin: bool = False
    consecutive_local_origin: int = 5


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """What a DestinationRule decides for one cluster (service, subset, port)."""

    load_balancer: LoadBalancer = LoadBalancer()
    connection_pool: ConnectionPool = ConnectionPool()
    # None: no outlier detection
    outlier_detection: OutlierDetection | None = None
    # None: `connection_pool.max_retries` bounds the retries in flight
    retry_budget: RetryBudget | None = None
    # the resource it came from ("DestinationRule apps/echo")
    origin: str = ""


DEFAULT_TRAFFIC_POLICY = TrafficPolicy()


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """The traffic policy of a service's requests for one subset ("" : the whole service) and
    port (0: every port without a policy of its own)."""

    service: str
    subset: str = ""
    port: int = 0
    policy: TrafficPolicy = DEFAULT_TRAFFIC_POLICY


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
    # traffic policies of every service the routes reference (DestinationRule trafficPolicy)
    clusters: tuple[ClusterPolicy, ...] = ()
    # tracing (MeshConfig extensionProviders and Telemetry resources)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

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

    def traffic_policy(self, service: str, subset: str, port: int) -> TrafficPolicy:
        """The policy of `service`'s cluster for `subset` and `port`: the port's own, else the
        one for every port, else Istio's defaults."""
        fallback = DEFAULT_TRAFFIC_POLICY
        for c in self.clusters:
            if c.service == service and c.subset == subset:
                if c.port == port:
                    return c.policy
                if c.port == 0:
                    fallback = c.policy
        return fallback
