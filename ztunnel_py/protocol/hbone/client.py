"""The client side of the HBONE core: opens CONNECT streams (the outbound agent, a waypoint's
upstream side)."""

from __future__ import annotations

from collections.abc import Sequence

import h2.events
import h2.settings
from h2.errors import ErrorCodes

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.protocol.hbone.authority import split_headers, validate_headers
from ztunnel_py.protocol.hbone.connection import HboneConnectionCore, StreamState
from ztunnel_py.protocol.hbone.errors import ConnectionClosedError, StreamLimitError
from ztunnel_py.protocol.hbone.events import Header, Response
from ztunnel_py.protocol.hbone.framing import MAX_STREAM_ID
from ztunnel_py.protocol.hbone.settings import (
    CLIENT_MAX_HEADER_LIST_SIZE,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
)

__all__ = ["HboneClient"]


class HboneClient(HboneConnectionCore):
    """Client side: opens CONNECT streams and reports their `Response`."""

    _client_side = True

    def __init__(self, *, max_streams: int = DEFAULT_MAX_STREAMS_PER_CONNECTION) -> None:
        super().__init__(
            max_header_list_size=CLIENT_MAX_HEADER_LIST_SIZE,
            extra_settings={h2.settings.SettingCodes.ENABLE_PUSH: 0},
        )
        self._max_streams = max_streams

    @property
    def available_streams(self) -> int:
        """How many more streams may be opened now: min(our limit, peer's
        MAX_CONCURRENT_STREAMS) minus open ones; 0 when closed, draining or out of stream ids."""
        if self._closed or self.is_draining:
            return 0
        if self._h2.highest_outbound_stream_id + 2 > MAX_STREAM_ID:
            return 0
        limit = min(self._max_streams, self.peer_max_concurrent_streams)
        open_now: int = self._h2.open_outbound_streams
        return max(0, limit - open_now)

    def start_connect(self, authority: str, extra_headers: Sequence[Header] = ()) -> int:
        """Send `CONNECT` with `:authority` (no :scheme/:path) and `extra_headers`.

        Returns the new stream id; the answer comes as a `Response` event. Raises `ValueError`
        for a malformed authority or header, `ConnectionClosedError` when closed or draining,
        `StreamLimitError` when no stream is available.
        """
        self._check_open()
        if self.is_draining:
            raise ConnectionClosedError("the HBONE connection is draining after GOAWAY")
        SocketAddr.parse(authority, hostname=True, what="authority")
        headers = [(":method", "CONNECT"), (":authority", authority)]
        headers += validate_headers(extra_headers)
        if self.available_streams <= 0:
            raise StreamLimitError("no stream available on this HBONE connection")
        stream_id: int = self._h2.get_next_available_stream_id()
        self._pull_h2()
        self._h2.send_headers(stream_id, headers)
        self._pull_h2()
        self._streams[stream_id] = StreamState(
            stream_id, self._peer_initial_window, receiving=False, answered=True
        )
        return stream_id

    def _on_h2_message(self, event: h2.events.Event) -> None:
        if not isinstance(event, h2.events.ResponseReceived):
            return
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        pseudo, headers = split_headers(event.headers)
        status_text = pseudo.get(":status", "")
        if not status_text.isdigit() or len(status_text) != 3:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        status = int(status_text)
        self._events.append(Response(stream_id, status, headers))
        if status == 200:
            stream.receiving = True
        else:
            # The tunnel was refused: free the stream on our side too.
            del self._streams[stream_id]
            self._h2_reset(stream_id, ErrorCodes.CANCEL)
