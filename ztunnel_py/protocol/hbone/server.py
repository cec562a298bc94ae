"""The server side of the HBONE core: validates CONNECT requests and answers them (the inbound
HBONE listener of an agent, a waypoint's downstream side).

Requests are bounded by the work they cause, not by open streams. A stream the client resets
is closed at once on the wire, but the application may still be working on its request
(authorizing it, connecting upstream): so every `ConnectRequest` holds one of the
MAX_CONCURRENT_STREAMS slots until the application calls `finish_request`, and CONNECTs beyond
that are refused with RST_STREAM(REFUSED_STREAM). Two abuse rules end the connection with GOAWAY
ENHANCE_YOUR_CALM (the limits are in `settings`): most requests reset by the client within a
second, before they were answered (the "rapid reset" attack), and too many streams reset for
the client's own faults. The core reads time only through the `clock` it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import h2.events
import h2.exceptions
import h2.settings
import h2.utilities
from h2.errors import ErrorCodes

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.protocol.hbone.authority import split_headers, validate_headers
from ztunnel_py.protocol.hbone.connection import HboneConnectionCore, StreamState
from ztunnel_py.protocol.hbone.errors import ProtocolViolation, StreamClosedError
from ztunnel_py.protocol.hbone.events import (
    ConnectRequest,
    Header,
    RequestRefused,
    RequestRejected,
)
from ztunnel_py.protocol.hbone.settings import (
    MAX_LOCAL_ERROR_RESETS,
    PREMATURE_RESET_MAX_LIFETIME,
    PREMATURE_RESET_MIN_REQUESTS,
    SERVER_MAX_CONCURRENT_STREAMS,
    SERVER_MAX_HEADER_LIST_SIZE,
)

__all__ = ["HboneServer"]

_NO_STREAM_LIMIT = 2**31 - 1
_REQUEST = h2.utilities.HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)


class HboneServer(HboneConnectionCore):
    """Server side: reports valid CONNECTs as `ConnectRequest` and answers them (`respond`).

    A request that is not CONNECT, or whose authority is not `host:port`, is answered 400 by the
    core itself (`RequestRejected`). A malformed request (pseudo-headers, field names or values
    HTTP/2 forbids) and one beyond the stream limit are stream errors, as RFC 9113 wants: their
    stream alone is reset (`RequestRefused`), the tunnels beside it go on. (h2 would end the
    connection for either, so it is told neither: it validates no inbound headers and enforces
    no stream limit here; this class does both.) Header lists over 64 KiB end the connection.
    """

    _client_side = False

    def __init__(
        self,
        *,
        max_concurrent_streams: int = SERVER_MAX_CONCURRENT_STREAMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limit = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
        super().__init__(
            max_header_list_size=SERVER_MAX_HEADER_LIST_SIZE,
            extra_settings={limit: max_concurrent_streams},
            validate_inbound_headers=False,
        )
        # Our SETTINGS are queued with the limit; h2 itself now enforces none.
        in_force = dict(self._h2.local_settings.items())
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={**in_force, limit: _NO_STREAM_LIMIT},  # type: ignore[dict-item]
        )
        self._max_concurrent_streams = max_concurrent_streams
        self._clock = clock
        # Requests handed to the application and not finished by it yet.
        self._unfinished: set[int] = set()
        self._requests = 0
        self._premature_resets = 0
        self._local_error_resets = 0

    def finish_request(self, stream_id: int) -> None:
        """The application is done with the request on `stream_id` (its handler returned): its
        slot counts no more toward MAX_CONCURRENT_STREAMS. Idempotent."""
        self._unfinished.discard(stream_id)

    def respond(self, stream_id: int, status: int, headers: Sequence[Header] = ()) -> None:
        """Answer a `ConnectRequest`. 200 opens the tunnel; any other status ends the stream
        (END_STREAM, no body) and tells the client to stop sending (RST_STREAM NO_ERROR).

        Raises `ValueError` for a status outside 200-599 or a bad header, `StreamClosedError`
        if the stream is gone or was answered already, `ConnectionClosedError`.
        """
        self._check_open()
        if not 200 <= status <= 599:
            raise ValueError(f"status {status} is not a final HTTP status")
        fields = [(":status", str(status)), *validate_headers(headers)]
        stream = self._streams.get(stream_id)
        if stream is None or stream.answered or not self._h2_stream_can_respond(stream_id):
            raise StreamClosedError(f"stream {stream_id} cannot be answered")
        self._pull_h2()
        if status == 200:
            self._h2.send_headers(stream_id, fields)
            self._pull_h2()
            stream.answered = True
            return
        del self._streams[stream_id]
        self._reject(stream_id, fields, request_ended=not stream.receiving)

    def _h2_stream_can_respond(self, stream_id: int) -> bool:
        h2_stream = self._h2.streams.get(stream_id)
        return h2_stream is not None and not h2_stream.closed

    def _reject(self, stream_id: int, fields: list[Header], *, request_ended: bool) -> None:
        self._h2.send_headers(stream_id, fields, end_stream=True)
        self._pull_h2()
        if not request_ended:
            self._h2_reset(stream_id, ErrorCodes.NO_ERROR)

    def _on_h2_message(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.RequestReceived):
            return
        stream_id = event.stream_id
        ended = event.stream_ended is not None
        if self._goaway_sent and stream_id > self._goaway_last_stream_id:
            self._h2_reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        # A stream counts while it is open or the application is still working on it.
        in_use = len(self._unfinished.union(self._streams))
        if in_use >= self._max_concurrent_streams:
            reason = f"{in_use} requests are still being handled"
            self._refuse(stream_id, ErrorCodes.REFUSED_STREAM, reason)
            return
        try:
            for _ in h2.utilities.validate_headers(event.headers, _REQUEST):
                pass
        except h2.exceptions.ProtocolError as e:
            self._refuse(stream_id, ErrorCodes.PROTOCOL_ERROR, f"malformed request: {e}")
            return
        pseudo, headers = split_headers(event.headers)
        method = pseudo.get(":method", "")
        authority = pseudo.get(":authority", "")
        reason = ""
        if method != "CONNECT":
            reason = f"method {method!r} is not CONNECT"
        else:
            try:
                SocketAddr.parse(authority, hostname=True, what="authority")
            except ValueError as e:
                reason = str(e)
        if reason:
            self._reject(stream_id, [(":status", "400")], request_ended=ended)
            self._events.append(RequestRejected(stream_id, 400, reason))
            return
        stream = StreamState(stream_id, self._peer_initial_window, receiving=True, answered=False)
        stream.opened_at = self._clock()
        self._streams[stream_id] = stream
        self._unfinished.add(stream_id)
        self._requests += 1
        self._events.append(ConnectRequest(stream_id, authority, headers))

    def _refuse(self, stream_id: int, code: int, reason: str) -> None:
        self._count_local_reset()
        self._h2_reset(stream_id, code)
        self._events.append(RequestRefused(stream_id, code, reason))

    def _on_stream_reset(self, stream: StreamState, error_code: int, remote: bool) -> None:
        super()._on_stream_reset(stream, error_code, remote)
        if not remote or stream.answered:
            return
        if self._clock() - stream.opened_at > PREMATURE_RESET_MAX_LIFETIME:
            return
        self._premature_resets += 1
        requests, premature = self._requests, self._premature_resets
        if requests >= PREMATURE_RESET_MIN_REQUESTS and 2 * premature >= requests:
            raise ProtocolViolation(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"the client reset {premature} of {requests} requests before they were answered "
                "(HTTP/2 rapid reset)",
            )

    def _stream_error(self, stream_id: int, code: int) -> None:
        self._count_local_reset()
        super()._stream_error(stream_id, code)

    def _count_local_reset(self) -> None:
        """One more stream reset because of the client's misbehaviour; past the budget the
        client is abusive."""
        if self._local_error_resets >= MAX_LOCAL_ERROR_RESETS:
            raise ProtocolViolation(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"the client caused more than {MAX_LOCAL_ERROR_RESETS} stream errors",
            )
        self._local_error_resets += 1
