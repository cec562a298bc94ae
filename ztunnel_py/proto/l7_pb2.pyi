import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from ztunnel_py.proto import authorization_pb2 as _authorization_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FilterPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSPECIFIED_PHASE: _ClassVar[FilterPhase]
    AUTHN: _ClassVar[FilterPhase]
    AUTHZ: _ClassVar[FilterPhase]
    STATS: _ClassVar[FilterPhase]

class MatchKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXACT: _ClassVar[MatchKind]
    PREFIX: _ClassVar[MatchKind]
    SUFFIX: _ClassVar[MatchKind]
    REGEX: _ClassVar[MatchKind]
    PRESENT: _ClassVar[MatchKind]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALLOW: _ClassVar[Action]
    DENY: _ClassVar[Action]
    AUDIT: _ClassVar[Action]
UNSPECIFIED_PHASE: FilterPhase
AUTHN: FilterPhase
AUTHZ: FilterPhase
STATS: FilterPhase
EXACT: MatchKind
PREFIX: MatchKind
SUFFIX: MatchKind
REGEX: MatchKind
PRESENT: MatchKind
ALLOW: Action
DENY: Action
AUDIT: Action

class HttpService(_message.Message):
    __slots__ = ("name", "routes", "subsets", "sources", "filters", "clusters", "telemetry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SUBSETS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    subsets: _containers.RepeatedCompositeFieldContainer[ServiceSubsets]
    sources: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[FilterConfig]
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterPolicy]
    telemetry: Telemetry
    def __init__(self, name: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., subsets: _Optional[_Iterable[_Union[ServiceSubsets, _Mapping]]] = ..., sources: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[FilterConfig, _Mapping]]] = ..., clusters: _Optional[_Iterable[_Union[ClusterPolicy, _Mapping]]] = ..., telemetry: _Optional[_Union[Telemetry, _Mapping]] = ...) -> None: ...

class Telemetry(_message.Message):
    __slots__ = ("tracing", "origins", "metrics", "access_log")
    TRACING_FIELD_NUMBER: _ClassVar[int]
    ORIGINS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOG_FIELD_NUMBER: _ClassVar[int]
    tracing: Tracing
    origins: _containers.RepeatedScalarFieldContainer[str]
    metrics: Metrics
    access_log: AccessLog
    def __init__(self, tracing: _Optional[_Union[Tracing, _Mapping]] = ..., origins: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Union[Metrics, _Mapping]] = ..., access_log: _Optional[_Union[AccessLog, _Mapping]] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("disabled", "overrides")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    overrides: _containers.RepeatedCompositeFieldContainer[MetricOverride]
    def __init__(self, disabled: bool = ..., overrides: _Optional[_Iterable[_Union[MetricOverride, _Mapping]]] = ...) -> None: ...

class MetricOverride(_message.Message):
    __slots__ = ("metric", "disabled", "tags")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    disabled: bool
    tags: _containers.RepeatedCompositeFieldContainer[TagOverride]
    def __init__(self, metric: _Optional[str] = ..., disabled: bool = ..., tags: _Optional[_Iterable[_Union[TagOverride, _Mapping]]] = ...) -> None: ...

class TagOverride(_message.Message):
    __slots__ = ("name", "remove", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    remove: bool
    value: str
    def __init__(self, name: _Optional[str] = ..., remove: bool = ..., value: _Optional[str] = ...) -> None: ...

class AccessLog(_message.Message):
    __slots__ = ("disabled", "filter")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    filter: str
    def __init__(self, disabled: bool = ..., filter: _Optional[str] = ...) -> None: ...

class Tracing(_message.Message):
    __slots__ = ("provider", "sampling", "custom_tags")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_TAGS_FIELD_NUMBER: _ClassVar[int]
    provider: TracingProvider
    sampling: float
    custom_tags: _containers.RepeatedCompositeFieldContainer[CustomTag]
    def __init__(self, provider: _Optional[_Union[TracingProvider, _Mapping]] = ..., sampling: _Optional[float] = ..., custom_tags: _Optional[_Iterable[_Union[CustomTag, _Mapping]]] = ...) -> None: ...

class TracingProvider(_message.Message):
    __slots__ = ("name", "kind", "service", "port", "path", "max_tag_length", "timeout", "headers")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OPENTELEMETRY: _ClassVar[TracingProvider.Kind]
        ZIPKIN: _ClassVar[TracingProvider.Kind]
    OPENTELEMETRY: TracingProvider.Kind
    ZIPKIN: TracingProvider.Kind
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_TAG_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TracingProvider.Kind
    service: str
    port: int
    path: str
    max_tag_length: int
    timeout: _duration_pb2.Duration
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TracingProvider.Kind, str]] = ..., service: _Optional[str] = ..., port: _Optional[int] = ..., path: _Optional[str] = ..., max_tag_length: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class CustomTag(_message.Message):
    __slots__ = ("name", "kind", "value", "default_value")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LITERAL: _ClassVar[CustomTag.Kind]
        HEADER: _ClassVar[CustomTag.Kind]
        ENVIRONMENT: _ClassVar[CustomTag.Kind]
    LITERAL: CustomTag.Kind
    HEADER: CustomTag.Kind
    ENVIRONMENT: CustomTag.Kind
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: CustomTag.Kind
    value: str
    default_value: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[CustomTag.Kind, str]] = ..., value: _Optional[str] = ..., default_value: _Optional[str] = ...) -> None: ...

class ClusterPolicy(_message.Message):
    __slots__ = ("service", "subset", "port", "policy")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    service: str
    subset: str
    port: int
    policy: TrafficPolicy
    def __init__(self, service: _Optional[str] = ..., subset: _Optional[str] = ..., port: _Optional[int] = ..., policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ...) -> None: ...

class TrafficPolicy(_message.Message):
    __slots__ = ("load_balancer", "connection_pool", "outlier_detection", "retry_budget", "origin")
    LOAD_BALANCER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_POOL_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    RETRY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    load_balancer: LoadBalancer
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection
    retry_budget: RetryBudget
    origin: str
    def __init__(self, load_balancer: _Optional[_Union[LoadBalancer, _Mapping]] = ..., connection_pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., retry_budget: _Optional[_Union[RetryBudget, _Mapping]] = ..., origin: _Optional[str] = ...) -> None: ...

class LoadBalancer(_message.Message):
    __slots__ = ("simple", "consistent_hash")
    class Simple(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEAST_REQUEST: _ClassVar[LoadBalancer.Simple]
        ROUND_ROBIN: _ClassVar[LoadBalancer.Simple]
        RANDOM: _ClassVar[LoadBalancer.Simple]
        PASSTHROUGH: _ClassVar[LoadBalancer.Simple]
    LEAST_REQUEST: LoadBalancer.Simple
    ROUND_ROBIN: LoadBalancer.Simple
    RANDOM: LoadBalancer.Simple
    PASSTHROUGH: LoadBalancer.Simple
    SIMPLE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    simple: LoadBalancer.Simple
    consistent_hash: ConsistentHash
    def __init__(self, simple: _Optional[_Union[LoadBalancer.Simple, str]] = ..., consistent_hash: _Optional[_Union[ConsistentHash, _Mapping]] = ...) -> None: ...

class ConsistentHash(_message.Message):
    __slots__ = ("source", "name", "cookie_path", "cookie_ttl", "table", "table_size")
    class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        HEADER: _ClassVar[ConsistentHash.Source]
        COOKIE: _ClassVar[ConsistentHash.Source]
        SOURCE_IP: _ClassVar[ConsistentHash.Source]
        QUERY_PARAMETER: _ClassVar[ConsistentHash.Source]
    HEADER: ConsistentHash.Source
    COOKIE: ConsistentHash.Source
    SOURCE_IP: ConsistentHash.Source
    QUERY_PARAMETER: ConsistentHash.Source
    class Table(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RING_HASH: _ClassVar[ConsistentHash.Table]
        MAGLEV: _ClassVar[ConsistentHash.Table]
    RING_HASH: ConsistentHash.Table
    MAGLEV: ConsistentHash.Table
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COOKIE_PATH_FIELD_NUMBER: _ClassVar[int]
    COOKIE_TTL_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    source: ConsistentHash.Source
    name: str
    cookie_path: str
    cookie_ttl: _duration_pb2.Duration
    table: ConsistentHash.Table
    table_size: int
    def __init__(self, source: _Optional[_Union[ConsistentHash.Source, str]] = ..., name: _Optional[str] = ..., cookie_path: _Optional[str] = ..., cookie_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., table: _Optional[_Union[ConsistentHash.Table, str]] = ..., table_size: _Optional[int] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("max_connections", "connect_timeout", "max_pending_requests", "max_requests", "max_requests_per_connection", "max_retries", "idle_timeout", "max_connection_duration")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_PER_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTION_DURATION_FIELD_NUMBER: _ClassVar[int]
    max_connections: int
    connect_timeout: _duration_pb2.Duration
    max_pending_requests: int
    max_requests: int
    max_requests_per_connection: int
    max_retries: int
    idle_timeout: _duration_pb2.Duration
    max_connection_duration: _duration_pb2.Duration
    def __init__(self, max_connections: _Optional[int] = ..., connect_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_pending_requests: _Optional[int] = ..., max_requests: _Optional[int] = ..., max_requests_per_connection: _Optional[int] = ..., max_retries: _Optional[int] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_connection_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_5xx", "consecutive_gateway_errors", "interval", "base_ejection_time", "max_ejection_percent", "min_health_percent", "split_local_origin", "consecutive_local_origin")
    CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_GATEWAY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_HEALTH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LOCAL_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_LOCAL_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    consecutive_5xx: int
    consecutive_gateway_errors: int
    interval: _duration_pb2.Duration
    base_ejection_time: _duration_pb2.Duration
    max_ejection_percent: int
    min_health_percent: int
    split_local_origin: bool
    consecutive_local_origin: int
    def __init__(self, consecutive_5xx: _Optional[int] = ..., consecutive_gateway_errors: _Optional[int] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., base_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_percent: _Optional[int] = ..., min_health_percent: _Optional[int] = ..., split_local_origin: bool = ..., consecutive_local_origin: _Optional[int] = ...) -> None: ...

class RetryBudget(_message.Message):
    __slots__ = ("percent", "min_concurrency")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MIN_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    percent: float
    min_concurrency: int
    def __init__(self, percent: _Optional[float] = ..., min_concurrency: _Optional[int] = ...) -> None: ...

class FilterConfig(_message.Message):
    __slots__ = ("name", "phase", "priority", "config_json", "fail_open", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    phase: FilterPhase
    priority: int
    config_json: str
    fail_open: bool
    origin: str
    def __init__(self, name: _Optional[str] = ..., phase: _Optional[_Union[FilterPhase, str]] = ..., priority: _Optional[int] = ..., config_json: _Optional[str] = ..., fail_open: bool = ..., origin: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "matches", "backends", "redirect", "direct_response", "rewrite", "request_headers", "response_headers", "timeout", "retries", "mirrors", "origin", "fault")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    DIRECT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    MIRRORS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    redirect: Redirect
    direct_response: DirectResponse
    rewrite: Rewrite
    request_headers: HeaderOps
    response_headers: HeaderOps
    timeout: _duration_pb2.Duration
    retries: RetryPolicy
    mirrors: _containers.RepeatedCompositeFieldContainer[Mirror]
    origin: str
    fault: Fault
    def __init__(self, name: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., direct_response: _Optional[_Union[DirectResponse, _Mapping]] = ..., rewrite: _Optional[_Union[Rewrite, _Mapping]] = ..., request_headers: _Optional[_Union[HeaderOps, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderOps, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retries: _Optional[_Union[RetryPolicy, _Mapping]] = ..., mirrors: _Optional[_Iterable[_Union[Mirror, _Mapping]]] = ..., origin: _Optional[str] = ..., fault: _Optional[_Union[Fault, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("path", "method", "headers", "query", "port")
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    path: PathMatch
    method: str
    headers: _containers.RepeatedCompositeFieldContainer[HeaderMatch]
    query: _containers.RepeatedCompositeFieldContainer[QueryMatch]
    port: int
    def __init__(self, path: _Optional[_Union[PathMatch, _Mapping]] = ..., method: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[HeaderMatch, _Mapping]]] = ..., query: _Optional[_Iterable[_Union[QueryMatch, _Mapping]]] = ..., port: _Optional[int] = ...) -> None: ...

class PathMatch(_message.Message):
    __slots__ = ("kind", "value", "segment_prefix", "ignore_case")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    kind: MatchKind
    value: str
    segment_prefix: bool
    ignore_case: bool
    def __init__(self, kind: _Optional[_Union[MatchKind, str]] = ..., value: _Optional[str] = ..., segment_prefix: bool = ..., ignore_case: bool = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("name", "kind", "value", "invert")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: MatchKind
    value: str
    invert: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[MatchKind, str]] = ..., value: _Optional[str] = ..., invert: bool = ...) -> None: ...

class QueryMatch(_message.Message):
    __slots__ = ("name", "kind", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: MatchKind
    value: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[MatchKind, str]] = ..., value: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderOps(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Header]
    add: _containers.RepeatedCompositeFieldContainer[Header]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("service", "port", "weight", "subset", "request_headers", "response_headers")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    service: str
    port: int
    weight: int
    subset: str
    request_headers: HeaderOps
    response_headers: HeaderOps
    def __init__(self, service: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., subset: _Optional[str] = ..., request_headers: _Optional[_Union[HeaderOps, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderOps, _Mapping]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("status", "scheme", "host", "port", "path", "prefix")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    status: int
    scheme: str
    host: str
    port: int
    path: str
    prefix: str
    def __init__(self, status: _Optional[int] = ..., scheme: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., path: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("path", "prefix", "authority")
    PATH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    path: str
    prefix: str
    authority: str
    def __init__(self, path: _Optional[str] = ..., prefix: _Optional[str] = ..., authority: _Optional[str] = ...) -> None: ...

class DirectResponse(_message.Message):
    __slots__ = ("status", "body")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    status: int
    body: str
    def __init__(self, status: _Optional[int] = ..., body: _Optional[str] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "per_try_timeout", "retry_on", "retriable_status_codes")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    RETRIABLE_STATUS_CODES_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    per_try_timeout: _duration_pb2.Duration
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    retriable_status_codes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, attempts: _Optional[int] = ..., per_try_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry_on: _Optional[_Iterable[str]] = ..., retriable_status_codes: _Optional[_Iterable[int]] = ...) -> None: ...

class Mirror(_message.Message):
    __slots__ = ("backend", "percent")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    percent: float
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ..., percent: _Optional[float] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("delay_percent", "delay", "abort_percent", "abort_status", "abort_grpc_status")
    DELAY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ABORT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ABORT_STATUS_FIELD_NUMBER: _ClassVar[int]
    ABORT_GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    delay_percent: float
    delay: _duration_pb2.Duration
    abort_percent: float
    abort_status: int
    abort_grpc_status: int
    def __init__(self, delay_percent: _Optional[float] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., abort_percent: _Optional[float] = ..., abort_status: _Optional[int] = ..., abort_grpc_status: _Optional[int] = ...) -> None: ...

class ServiceSubsets(_message.Message):
    __slots__ = ("service", "subsets")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SUBSETS_FIELD_NUMBER: _ClassVar[int]
    service: str
    subsets: _containers.RepeatedCompositeFieldContainer[Subset]
    def __init__(self, service: _Optional[str] = ..., subsets: _Optional[_Iterable[_Union[Subset, _Mapping]]] = ...) -> None: ...

class Subset(_message.Message):
    __slots__ = ("name", "labels", "workload_uids")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_UIDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    workload_uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., workload_uids: _Optional[_Iterable[str]] = ...) -> None: ...

class HttpAuthorization(_message.Message):
    __slots__ = ("name", "namespace", "action", "rules", "dry_run", "services")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    action: Action
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    dry_run: bool
    services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., dry_run: bool = ..., services: _Optional[_Iterable[str]] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("clauses",)
    CLAUSES_FIELD_NUMBER: _ClassVar[int]
    clauses: _containers.RepeatedCompositeFieldContainer[Clause]
    def __init__(self, clauses: _Optional[_Iterable[_Union[Clause, _Mapping]]] = ...) -> None: ...

class Clause(_message.Message):
    __slots__ = ("matches",)
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    def __init__(self, matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("l4", "paths", "not_paths", "methods", "not_methods", "hosts", "not_hosts", "headers", "not_headers", "request_principals", "not_request_principals", "claims", "not_claims")
    L4_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    NOT_PATHS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    NOT_METHODS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NOT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    NOT_HEADERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    NOT_REQUEST_PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    NOT_CLAIMS_FIELD_NUMBER: _ClassVar[int]
    l4: _authorization_pb2.Match
    paths: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    not_paths: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    methods: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    not_methods: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    hosts: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    not_hosts: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    headers: _containers.RepeatedCompositeFieldContainer[HeaderCondition]
    not_headers: _containers.RepeatedCompositeFieldContainer[HeaderCondition]
    request_principals: _containers.RepeatedCompositeFieldContainer[RequestPrincipal]
    not_request_principals: _containers.RepeatedCompositeFieldContainer[RequestPrincipal]
    claims: _containers.RepeatedCompositeFieldContainer[ClaimCondition]
    not_claims: _containers.RepeatedCompositeFieldContainer[ClaimCondition]
    def __init__(self, l4: _Optional[_Union[_authorization_pb2.Match, _Mapping]] = ..., paths: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., not_paths: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., methods: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., not_methods: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., hosts: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., not_hosts: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ..., headers: _Optional[_Iterable[_Union[HeaderCondition, _Mapping]]] = ..., not_headers: _Optional[_Iterable[_Union[HeaderCondition, _Mapping]]] = ..., request_principals: _Optional[_Iterable[_Union[RequestPrincipal, _Mapping]]] = ..., not_request_principals: _Optional[_Iterable[_Union[RequestPrincipal, _Mapping]]] = ..., claims: _Optional[_Iterable[_Union[ClaimCondition, _Mapping]]] = ..., not_claims: _Optional[_Iterable[_Union[ClaimCondition, _Mapping]]] = ...) -> None: ...

class RequestPrincipal(_message.Message):
    __slots__ = ("issuer", "subject")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    issuer: _authorization_pb2.StringMatch
    subject: _authorization_pb2.StringMatch
    def __init__(self, issuer: _Optional[_Union[_authorization_pb2.StringMatch, _Mapping]] = ..., subject: _Optional[_Union[_authorization_pb2.StringMatch, _Mapping]] = ...) -> None: ...

class ClaimCondition(_message.Message):
    __slots__ = ("path", "values")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    def __init__(self, path: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ...) -> None: ...

class HeaderCondition(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedCompositeFieldContainer[_authorization_pb2.StringMatch]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[_Union[_authorization_pb2.StringMatch, _Mapping]]] = ...) -> None: ...

class HttpAuthentication(_message.Message):
    __slots__ = ("name", "namespace", "rules", "services")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    rules: _containers.RepeatedCompositeFieldContainer[JwtRule]
    services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[JwtRule, _Mapping]]] = ..., services: _Optional[_Iterable[str]] = ...) -> None: ...

class JwtRule(_message.Message):
    __slots__ = ("issuer", "audiences", "jwks", "jwks_error", "forward_original_token", "output_payload_to_header", "output_claim_to_headers", "from_headers", "from_params", "from_cookies", "space_delimited_claims", "origin")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCES_FIELD_NUMBER: _ClassVar[int]
    JWKS_FIELD_NUMBER: _ClassVar[int]
    JWKS_ERROR_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ORIGINAL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PAYLOAD_TO_HEADER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CLAIM_TO_HEADERS_FIELD_NUMBER: _ClassVar[int]
    FROM_HEADERS_FIELD_NUMBER: _ClassVar[int]
    FROM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    FROM_COOKIES_FIELD_NUMBER: _ClassVar[int]
    SPACE_DELIMITED_CLAIMS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    audiences: _containers.RepeatedScalarFieldContainer[str]
    jwks: str
    jwks_error: str
    forward_original_token: bool
    output_payload_to_header: str
    output_claim_to_headers: _containers.RepeatedCompositeFieldContainer[ClaimToHeader]
    from_headers: _containers.RepeatedCompositeFieldContainer[JwtHeader]
    from_params: _containers.RepeatedScalarFieldContainer[str]
    from_cookies: _containers.RepeatedScalarFieldContainer[str]
    space_delimited_claims: _containers.RepeatedScalarFieldContainer[str]
    origin: str
    def __init__(self, issuer: _Optional[str] = ..., audiences: _Optional[_Iterable[str]] = ..., jwks: _Optional[str] = ..., jwks_error: _Optional[str] = ..., forward_original_token: bool = ..., output_payload_to_header: _Optional[str] = ..., output_claim_to_headers: _Optional[_Iterable[_Union[ClaimToHeader, _Mapping]]] = ..., from_headers: _Optional[_Iterable[_Union[JwtHeader, _Mapping]]] = ..., from_params: _Optional[_Iterable[str]] = ..., from_cookies: _Optional[_Iterable[str]] = ..., space_delimited_claims: _Optional[_Iterable[str]] = ..., origin: _Optional[str] = ...) -> None: ...

class JwtHeader(_message.Message):
    __slots__ = ("name", "prefix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    prefix: str
    def __init__(self, name: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ClaimToHeader(_message.Message):
    __slots__ = ("header", "claim")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    header: str
    claim: str
    def __init__(self, header: _Optional[str] = ..., claim: _Optional[str] = ...) -> None: ...
