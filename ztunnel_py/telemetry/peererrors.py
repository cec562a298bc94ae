"""What misbehaving or broken peers did to an HBONE server: a trace for every kind of attack.

Failed TLS handshakes, connection-level protocol errors (the GOAWAY we send for malformed or
oversized headers, too many streams, a CONTINUATION flood, HTTP/1.1 spoken after ALPN h2, a
rapid-reset flood) and streams the client reset are counted in
`ztunnel_py_hbone_errors_total{kind, reason}` and logged at WARN (stream resets at DEBUG:
clients reset streams in normal operation) with the full peer and local addresses, rate-limited
per kind so that no flood of bad connections turns into a flood of log lines.
`PeerErrors` has the methods `transport.hbone.serve_hbone_connection` calls (its `events`).
"""

from __future__ import annotations

import logging

from h2.errors import ErrorCodes

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.telemetry.ratelimit import LogLimiter

log = logging.getLogger("ztunnel_py.hbone.peers")

# A failed handshake's reason, from the words of its error; bounded for the metric label.
_HANDSHAKE_REASONS = (
    ("timed out", "timeout"),
    ("did not start a TLS handshake", "not_tls"),
    ("first TLS record", "not_tls"),
    ("abandoned", "handshakes_limit"),
    ("cipher suite", "cipher_suite"),
    ("ALPN", "alpn"),
    ("identity", "identity"),
    ("trustdomain", "identity"),
    ("certificate", "certificate"),
    ("closed the connection", "peer_closed"),
    ("reset by peer", "peer_closed"),
)


def handshake_reason(error: str) -> str:
    return next((reason for words, reason in _HANDSHAKE_REASONS if words in error), "tls")


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"


class PeerErrors:
    def __init__(self, metrics: Metrics, limiter: LogLimiter | None = None) -> None:
        self.metrics = metrics
        self.limiter = limiter or LogLimiter()

    def _log(self, level: int, kind: str, message: str, fields: dict[str, object]) -> None:
        if not log.isEnabledFor(level):
            return
        suppressed = self.limiter.allow(kind)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log.log(level, message, extra={"fields": fields})

    def handshake_failed(self, peer: tuple[str, int], local: tuple[str, int], error: str) -> None:
        self.metrics.hbone_error("handshake", handshake_reason(error))
        fields: dict[str, object] = {
            "src.addr": str(SocketAddr(*peer)),
            "dst.addr": str(SocketAddr(*local)),
            "error": error,
        }
        self._log(logging.WARNING, "handshake", "HBONE handshake failed", fields)

    def protocol_error(
        self, peer: tuple[str, int], local: tuple[str, int], code: int, reason: str
    ) -> None:
        name = _code_name(code)
        self.metrics.hbone_error("protocol", name)
        fields: dict[str, object] = {
            "src.addr": str(SocketAddr(*peer)),
            "dst.addr": str(SocketAddr(*local)),
            "code": name,
            "error": reason,
        }
        self._log(logging.WARNING, "protocol", "HBONE connection closed: protocol error", fields)

    def stream_reset(self, peer: tuple[str, int], local: tuple[str, int], code: int) -> None:
        name = _code_name(code)
        self.metrics.hbone_error("stream_reset", name)
        fields: dict[str, object] = {
            "src.addr": str(SocketAddr(*peer)),
            "dst.addr": str(SocketAddr(*local)),
            "code": name,
        }
        self._log(logging.DEBUG, "stream_reset", "HBONE stream reset by the client", fields)
