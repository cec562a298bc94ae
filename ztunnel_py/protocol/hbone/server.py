"""The server side of the HBONE core: validates CONNECT requests and answers them (the inbound
HBONE listener of an agent, a waypoint's downstream side)."""

from __future__ import annotations

from collections.abc import Sequence

import h2.events
import h2.settings
from h2.errors import ErrorCodes

from ztunnel_py.protocol.hbone.authority import parse_authority, split_headers, validate_headers
from ztunnel_py.protocol.hbone.connection import HboneConnectionCore, StreamState
from ztunnel_py.protocol.hbone.errors import StreamClosedError
from ztunnel_py.protocol.hbone.events import ConnectRequest, Header, RequestRejected
from ztunnel_py.protocol.hbone.settings import (
    SERVER_MAX_CONCURRENT_STREAMS,
    SERVER_MAX_HEADER_LIST_SIZE,
)

__all__ = ["HboneServer"]


class HboneServer(HboneConnectionCore):
    """Server side: reports valid CONNECTs as `ConnectRequest` and answers them (`respond`).

    A request that is not CONNECT, or whose authority is not `host:port`, is answered 400 by the
    core itself (`RequestRejected`). Malformed requests (bad pseudo-headers, oversized header
    lists, too many streams) are connection errors, as h2 treats them.
    """

    _client_side = False

    def __init__(self, *, max_concurrent_streams: int = SERVER_MAX_CONCURRENT_STREAMS) -> None:
        super().__init__(
            max_header_list_size=SERVER_MAX_HEADER_LIST_SIZE,
            extra_settings={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams
            },
        )

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
        pseudo, headers = split_headers(event.headers)
        method = pseudo.get(":method", "")
        authority = pseudo.get(":authority", "")
        reason = ""
        if method != "CONNECT":
            reason = f"method {method!r} is not CONNECT"
        else:
            try:
                parse_authority(authority)
            except ValueError as e:
                reason = str(e)
        if reason:
            self._reject(stream_id, [(":status", "400")], request_ended=ended)
            self._events.append(RequestRejected(stream_id, 400, reason))
            return
        self._streams[stream_id] = StreamState(
            stream_id, self._peer_initial_window, receiving=True, answered=False
        )
        self._events.append(ConnectRequest(stream_id, authority, headers))
