"""The access log: one line per connection on logger `access`, with ztunnel's field names.

- `connection opened` (DEBUG) when a proxied connection starts;
- `connection complete` when it ends: INFO, or ERROR with `error=...` if it failed;
- `connection failed` (WARN) for failures before the connection's context is known; these are
  what a flood of bad connections produces, so they are rate-limited (`LogLimiter`, per
  direction) and the next line let through says how many were left out (`suppressed=N`).
- `request complete` for each HTTP request a waypoint or sidecar proxied (see
  `request_complete`).

Fields (docs/istio-compat.md, "Access log"): src.addr, src.workload, src.namespace, src.identity,
dst.addr, dst.hbone_addr, dst.service, dst.workload, dst.namespace, dst.identity, direction, then at
completion bytes_sent, bytes_recv, duration (`<n>ms`) and error. Unknown values are left out;
identities appear only for mTLS connections (on an outbound HBONE connection `src.identity` is the
identity the agent presents for the source). Fields travel in the record's `fields` attribute, which
`telemetry.logs`' formatters render as ztunnel does: addresses bare (`src.addr=10.0.0.1:5000`),
counts bare, every other value a quoted string (`direction="inbound"`, `duration="3ms"`). Where
logging is set up the simple way (text lines, `setup_logging`'s handler the only one), a line is
written straight to the stream, the same line without a `LogRecord` (`logs.write_text_line`).
"""

from __future__ import annotations

import logging

from ztunnel_py.telemetry.labels import SOURCE, UNKNOWN, TrafficLabels
from ztunnel_py.telemetry.logs import Display, write_text_line
from ztunnel_py.telemetry.ratelimit import LogLimiter

access_log = logging.getLogger("access")
# request_complete's fields that hold addresses.
_ADDRESSES = ("src.addr", "upstream_host")
_failures = LogLimiter()


def _log(level: int, message: str, fields: dict[str, object]) -> None:
    """A line (the caller checked the level is enabled): straight to the stream where logging
    is set up the simple way, else through `logging`."""
    if not write_text_line(access_log, level, message, fields):
        access_log.log(level, message, extra={"fields": fields})


def _known(value: str) -> str | None:
    return value if value and value != UNKNOWN else None


def direction(reporter: str) -> str:
    return "outbound" if reporter == SOURCE else "inbound"


def _context_fields(
    labels: TrafficLabels, src_addr: str, dst_addr: str, hbone_addr: str | None
) -> dict[str, object]:
    mtls = labels.mtls
    return {
        "src.addr": Display(src_addr),
        "src.workload": labels.source_pod or _known(labels.source_canonical_service),
        "src.namespace": _known(labels.source_workload_namespace),
        "src.identity": _known(labels.source_principal) if mtls else None,
        "dst.addr": Display(dst_addr),
        "dst.hbone_addr": Display(hbone_addr) if hbone_addr is not None else None,
        "dst.service": _known(labels.destination_service),
        "dst.workload": labels.destination_pod or _known(labels.destination_canonical_service),
        "dst.namespace": _known(labels.destination_workload_namespace),
        "dst.identity": _known(labels.destination_principal) if mtls else None,
        "direction": direction(labels.reporter),
    }


def connection_opened(
    labels: TrafficLabels, src_addr: str, dst_addr: str, hbone_addr: str | None = None
) -> None:
    if access_log.isEnabledFor(logging.DEBUG):
        fields = _context_fields(labels, src_addr, dst_addr, hbone_addr)
        _log(logging.DEBUG, "connection opened", fields)


def connection_complete(
    labels: TrafficLabels,
    src_addr: str,
    dst_addr: str,
    hbone_addr: str | None,
    *,
    bytes_sent: int,
    bytes_recv: int,
    duration_ms: int,
    error: str | None = None,
) -> None:
    level = logging.ERROR if error is not None else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    fields = _context_fields(labels, src_addr, dst_addr, hbone_addr)
    fields |= {"bytes_sent": bytes_sent, "bytes_recv": bytes_recv, "duration": f"{duration_ms}ms"}
    if error is not None:
        fields["error"] = error
    _log(level, "connection complete", fields)


def connection_failed(src_addr: str, dst_addr: str, reporter: str, error: str) -> None:
    """An early failure (e.g. an early deny), before workloads and labels are known."""
    suppressed = _failures.allow(direction(reporter))
    if suppressed is None:
        return
    fields: dict[str, object] = {
        "src.addr": Display(src_addr),
        "dst.addr": Display(dst_addr),
        "direction": direction(reporter),
        "error": error,
    }
    if suppressed:
        fields["suppressed"] = suppressed
    if access_log.isEnabledFor(logging.WARNING):
        _log(logging.WARNING, "connection failed", fields)


def request_complete(fields: dict[str, object], *, error: bool = False) -> None:
    """One HTTP request through a waypoint (or sidecar): `request complete` with Envoy's access
    log fields under their Istio names (method, path, protocol, response_code, response_flags,
    response_code_details, bytes_received, bytes_sent, duration, upstream_host,
    upstream_cluster, authority, request_id, user_agent, route_name) plus the peers (src.addr,
    src.identity, dst.service, dst.workload, ...). 5xx and local failures log at WARN. Addresses
    are written bare, as in the connection lines."""
    level = logging.WARNING if error else logging.INFO
    if access_log.isEnabledFor(level):
        for key in _ADDRESSES:
            value = fields.get(key)
            if isinstance(value, str):
                fields[key] = Display(value)
        _log(level, "request complete", fields)
