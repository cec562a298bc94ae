"""Request metrics and the access log, recorded once per request when it is over (`on_log`).

Metrics are Istio's request families (`telemetry.requests`); the access log writes one
`request complete` line per request with Envoy's fields under readable names (see
`telemetry.accesslog.request_complete`). What the filter cannot know by itself, the peers and
the destination service, comes from the app through the callables it is built with.

A service's Telemetry (`model.telemetry.TelemetryConfig`) may turn either off, disable or
relabel metrics, and filter the access log; its expressions see the request as Envoy's
attributes (`attributes`: `request.*`, `response.*`, `source.*`, `destination.*`,
`connection.mtls`, `upstream.*`, `xds.*`).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

from ztunnel_py.http.filter import Filter, RequestContext
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.model import Service
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.telemetry import TelemetryConfig
from ztunnel_py.telemetry import accesslog, cel
from ztunnel_py.telemetry.labels import UNKNOWN
from ztunnel_py.telemetry.requests import LabelValues, MetricOverrides, Peer, RequestMetrics

__all__ = ["TelemetryFilter", "attributes", "head_size"]

PeerOf = Callable[[RequestContext], Peer]


def _fields_size(headers: Headers) -> int:
    # every name and value, plus ": " and CRLF per field (summed without a Python loop)
    return sum(map(len, chain.from_iterable(headers))) + 4 * len(headers)


def head_size(head: RequestHead | ResponseHead) -> int:
    """The head's size as HTTP/1.1 carried it (request or status line, fields, blank line): as
    received or sent when it went over HTTP/1.1, else as HTTP/1.1 would write it (Envoy's
    uncompressed size of an HTTP/2 head)."""
    if head.wire_size:
        return head.wire_size
    if isinstance(head, RequestHead):
        line = len(head.method) + len(head.path) + 12 + len(head.authority) + 8
    else:
        line = 13 + len(head.reason or "")
    return line + _fields_size(head.headers) + 2


class TelemetryFilter(Filter):
    name = "telemetry"

    def __init__(
        self,
        metrics: RequestMetrics | None,
        *,
        reporter: str,
        source: PeerOf,
        destination: PeerOf,
        service: Callable[[RequestContext], Service | None],
        config: TelemetryConfig | None = None,
    ) -> None:
        self._metrics = metrics
        self._reporter = reporter
        self._source = source
        self._destination = destination
        self._service = service
        config = config if config is not None else TelemetryConfig()
        m = config.metrics
        self._overrides = MetricOverrides(m) if m.overrides or not m.enabled else None
        self._log = config.access_log.enabled
        self._log_filter = cel.parse(config.access_log.filter) if config.access_log.filter else None
        self._labels = LabelValues()

    def on_log(self, ctx: RequestContext) -> None:
        req, resp = ctx.request, ctx.response
        status = resp.status if resp is not None else 0
        grpc = (req.headers.get("content-type") or "").startswith("application/grpc")
        source = self._source(ctx)
        destination = self._destination(ctx)
        service = self._service(ctx)
        service_host = ctx.service.partition("/")[2] if ctx.service else ""
        request_bytes = head_size(req) + ctx.request_body_bytes
        response_bytes = (head_size(resp) if resp is not None else 0) + ctx.response_body_bytes
        mtls = ctx.downstream.peer_identity is not None
        flags = ctx.flags_text
        duration_ms = ctx.duration_ms
        # the attributes are looked up only by a Telemetry's overrides or log filter: made
        # only for those
        lookup = (
            attributes(ctx, request_bytes, response_bytes)
            if self._overrides is not None or self._log_filter is not None
            else None
        )
        if self._metrics is not None:
            values = self._labels.values(
                self._reporter,
                source,
                destination,
                service,
                service_host,
                "grpc" if grpc else "http",
                status,
                ctx.grpc_status or "" if grpc else "",
                flags,
                mtls,
            )
            overrides = (
                (self._overrides, lookup)
                if self._overrides is not None and lookup is not None
                else None
            )
            self._metrics.record_values(
                values, duration_ms, request_bytes, response_bytes, overrides
            )
        if not self._log or (
            self._log_filter is not None
            and lookup is not None
            and not self._log_filter.matches(lookup)
        ):
            return
        trace = ctx.state.get("trace")
        backend = ctx.backend
        fields: dict[str, object] = {
            "src.addr": ctx.downstream.peer_address,
            "src.workload": _known(source.workload),
            "src.namespace": _known(source.namespace),
            "src.identity": str(ctx.downstream.peer_identity) if mtls else None,
            "dst.service": service_host or None,
            "dst.workload": _known(destination.workload),
            "dst.identity": _known(destination.principal),
            "method": req.method,
            "path": req.path,
            "protocol": req.version,
            "authority": req.authority,
            "response_code": status,
            "response_flags": flags,
            "response_code_details": ctx.details or ("via_upstream" if resp else None),
            "grpc_status": ctx.grpc_status,
            "duration": f"{round(duration_ms)}ms",
            "upstream_host": ctx.upstream_host or None,
            "upstream_cluster": backend.cluster if backend is not None else None,
            "route_name": ctx.route.name if ctx.route is not None else None,
            "attempts": ctx.attempts if ctx.attempts > 1 else None,
            "bytes_received": ctx.request_body_bytes,
            "bytes_sent": ctx.response_body_bytes,
            "request_id": req.headers.get("x-request-id"),
            "trace_id": getattr(trace, "trace_id", None),
            "user_agent": req.headers.get("user-agent"),
            "authorization": ctx.authz_decision or None,
        }
        accesslog.request_complete(fields, error=status >= 500 or status == 0)


def _known(value: str) -> str | None:
    return value if value and value != UNKNOWN else None


def attributes(ctx: RequestContext, request_bytes: int, response_bytes: int) -> cel.Lookup:
    """Envoy's attributes of a finished request, looked up by name (None: not known)."""
    resp = ctx.response

    def lookup(name: str) -> Any:
        if name.startswith("request."):
            return _request_attribute(ctx, name[8:], request_bytes)
        if name.startswith("response."):
            if resp is None:
                return None
            return {
                "code": resp.status,
                "code_details": ctx.details or "via_upstream",
                "flags": ctx.flags_text,
                "grpc_status": ctx.grpc_status,
                "headers": {n.lower(): v for n, v in resp.headers},
                "size": ctx.response_body_bytes,
                "total_size": response_bytes,
            }.get(name[9:])
        if name in ("source.address", "source.port"):
            addr = SocketAddr.parse(ctx.downstream.peer_address)
            return str(addr.host) if name == "source.address" else addr.port
        if name in ("destination.address", "destination.port"):
            dest = SocketAddr.parse(ctx.downstream.destination)
            return str(dest.host) if name == "destination.address" else dest.port
        if name == "connection.mtls":
            return ctx.downstream.peer_identity is not None
        if name in ("upstream.address", "upstream.port") and ctx.upstream_host:
            up = SocketAddr.parse(ctx.upstream_host)
            return str(up.host) if name == "upstream.address" else up.port
        if name == "xds.cluster_name" and ctx.backend is not None:
            return ctx.backend.cluster
        if name == "xds.route_name" and ctx.route is not None:
            return ctx.route.name
        return None

    return lookup


def _request_attribute(ctx: RequestContext, name: str, total: int) -> Any:
    req = ctx.request
    return {
        "path": req.path,
        "url_path": req.path_only,
        "host": req.authority,
        "scheme": req.scheme,
        "method": req.method,
        "headers": {n.lower(): v for n, v in req.headers},
        "useragent": req.headers.get("user-agent"),
        "id": req.headers.get("x-request-id"),
        "protocol": req.version,
        "duration": ctx.duration_ms / 1000.0,
        "size": ctx.request_body_bytes,
        "total_size": total,
    }.get(name)
