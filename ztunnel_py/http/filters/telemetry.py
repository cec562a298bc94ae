"""Request metrics and the access log, recorded once per request when it is over (`on_log`).

Metrics are Istio's request families (`telemetry.requests`); the access log writes one
`request complete` line per request with Envoy's fields under readable names (see
`telemetry.accesslog.request_complete`). What the filter cannot know by itself, the peers and
the destination service, comes from the app through the callables it is built with.
"""

from __future__ import annotations

from collections.abc import Callable

from ztunnel_py.http.filter import Filter, RequestContext
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead
from ztunnel_py.model import Service
from ztunnel_py.telemetry import accesslog
from ztunnel_py.telemetry.labels import UNKNOWN
from ztunnel_py.telemetry.requests import Peer, RequestLabels, RequestMetrics

__all__ = ["TelemetryFilter", "head_size"]

PeerOf = Callable[[RequestContext], Peer]


def _fields_size(headers: Headers) -> int:
    return sum(len(n) + len(v) + 4 for n, v in headers)


def head_size(head: RequestHead | ResponseHead) -> int:
    """The head's size as HTTP/1.1 writes it (request or status line, fields, blank line)."""
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
    ) -> None:
        self._metrics = metrics
        self._reporter = reporter
        self._source = source
        self._destination = destination
        self._service = service

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
        if self._metrics is not None:
            labels = RequestLabels(
                reporter=self._reporter,
                source=source,
                destination=destination,
                service=service,
                service_host=service_host,
                request_protocol="grpc" if grpc else "http",
                response_code=status,
                grpc_response_status=ctx.grpc_status or "" if grpc else "",
                response_flags=ctx.flags_text,
                mtls=mtls,
            )
            self._metrics.record(labels, ctx.duration_ms, request_bytes, response_bytes)
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
            "response_flags": ctx.flags_text,
            "response_code_details": ctx.details or ("via_upstream" if resp else None),
            "grpc_status": ctx.grpc_status,
            "duration": f"{round(ctx.duration_ms)}ms",
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
