"""Telemetry as a waypoint applies it to one service's requests: tracing (and, with it, which
collector gets the spans), request metrics and the access log, resolved by the control plane
from Istio's MeshConfig `extensionProviders` and the `Telemetry` resources that apply
(`controlplane/translate/telemetry.py`). Pure data: no I/O.

Istio's rules carried here:
- a span is reported only when a tracing `provider` is set: with none (no provider in MeshConfig
  `defaultProviders.tracing` nor in a Telemetry, a provider name that is not defined, or
  `disableSpanReporting`), trace context is still propagated, nothing is exported;
- `sampling` (percent) decides for new traces only: an incoming sampling decision
  (`traceparent` flags, `x-b3-sampled`) is kept, as Envoy keeps it;
- `custom_tags` are added to every span: a literal, a request header (with a default), or an
  environment variable of the proxy (with a default);
- metrics: off altogether when the Prometheus provider is not among the providers in force;
  per metric (`REQUEST_COUNT`, `REQUEST_DURATION`, `REQUEST_SIZE`, `RESPONSE_SIZE`) disabled,
  or with tags (labels) removed or set from a CEL expression over the request's attributes
  (`telemetry/cel.py`), applied in order;
- the access log: off when disabled or when no access-log provider is in force; with a filter
  (a CEL expression), only the requests it is true for are logged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_TAG_LENGTH",
    "DEFAULT_SAMPLING",
    "DEFAULT_ZIPKIN_PATH",
    "METRICS",
    "AccessLogConfig",
    "CustomTag",
    "CustomTagKind",
    "MetricOverride",
    "MetricsConfig",
    "ProviderKind",
    "TagOverride",
    "TelemetryConfig",
    "TracingConfig",
    "TracingProvider",
]

# Istio's default sampling percentage (PILOT_TRACE_SAMPLING / defaultConfig.tracing.sampling).
DEFAULT_SAMPLING = 1.0
# Where a Zipkin collector takes JSON v2 spans when the provider names no path.
DEFAULT_ZIPKIN_PATH = "/api/v2/spans"
# Envoy's default limit on a span tag's length (`max_tag_length` of the providers).
DEFAULT_MAX_TAG_LENGTH = 256


class ProviderKind(enum.Enum):
    OPENTELEMETRY = "opentelemetry"  # OTLP over gRPC
    ZIPKIN = "zipkin"  # Zipkin JSON v2 over HTTP


@dataclass(frozen=True, slots=True)
class TracingProvider:
    """One MeshConfig `extensionProviders` entry that exports spans."""

    name: str
    kind: ProviderKind
    # where the collector is: "<namespace>/<hostname>" of a service the mesh knows (the proxy
    # picks one of its endpoints), else a host name or IP address to dial as it is
    service: str
    port: int
    # Zipkin: the collector's path ("" for DEFAULT_ZIPKIN_PATH)
    path: str = ""
    max_tag_length: int = DEFAULT_MAX_TAG_LENGTH
    # per export (None: the exporter's default)
    timeout: float | None = None
    # HTTP headers (Zipkin) or gRPC initial metadata (OpenTelemetry) sent with each export
    headers: tuple[tuple[str, str], ...] = ()


class CustomTagKind(enum.Enum):
    LITERAL = "literal"
    HEADER = "header"
    ENVIRONMENT = "environment"


@dataclass(frozen=True, slots=True)
class CustomTag:
    name: str
    kind: CustomTagKind
    # the literal value, the request header's name, or the environment variable's name
    value: str
    # for headers and environment variables: the tag's value when they are absent
    default: str = ""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    # None: spans are not reported (context is still propagated)
    provider: TracingProvider | None = None
    sampling: float = DEFAULT_SAMPLING
    custom_tags: tuple[CustomTag, ...] = ()


# Istio's request metrics (Telemetry `metrics.overrides.match.metric`) and their families.
METRICS = {
    "REQUEST_COUNT": "istio_requests_total",
    "REQUEST_DURATION": "istio_request_duration_milliseconds",
    "REQUEST_SIZE": "istio_request_bytes",
    "RESPONSE_SIZE": "istio_response_bytes",
}


@dataclass(frozen=True, slots=True)
class TagOverride:
    # the label
    name: str
    # remove it (Prometheus: an empty value, which is the same as no label)
    remove: bool = False
    # else its value: a CEL expression over the request's attributes
    value: str = ""


@dataclass(frozen=True, slots=True)
class MetricOverride:
    # a METRICS key
    metric: str
    disabled: bool = False
    tags: tuple[TagOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # in the order they apply (later ones win for the same metric and tag)
    overrides: tuple[MetricOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = True
    # a CEL expression; "" logs every request
    filter: str = ""


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What the control plane resolved for one service at its waypoint."""

    tracing: TracingConfig = field(default_factory=TracingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    # the resources it came from ("Telemetry istio-system/mesh-default", "MeshConfig")
    origins: tuple[str, ...] = ()
