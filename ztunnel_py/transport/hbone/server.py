"""The server side: `serve_hbone_connection` runs one accepted connection and hands each CONNECT
to an async handler as an `HboneRequest`.

A handler runs in its own task under a cancel scope that is cancelled if the client resets the
stream, or the connection ends, before the handler answered: the work of a request nobody waits
for stops at once (the HTTP/2 "rapid reset" attack turns that work into the cost). Until the
handler returns its request keeps counting toward the connection's stream limit (see
`protocol.hbone.server`).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from ztunnel_py.model.identity import Identity
from ztunnel_py.protocol.hbone import (
    SERVER_MAX_CONCURRENT_STREAMS,
    ConnectionTerminated,
    ConnectRequest,
    Event,
    HboneCoreError,
    HboneServer,
    Header,
    RequestRefused,
    RequestRejected,
    StreamReset,
)
from ztunnel_py.transport.hbone.connection import (
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    HboneConnection,
    closed_on_failure,
    no_delay,
    secure_handshake,
)
from ztunnel_py.transport.hbone.errors import HboneHandshakeError, HboneStreamError
from ztunnel_py.transport.hbone.stream import HboneStream
from ztunnel_py.transport.tls import DEFAULT_HANDSHAKE_TIMEOUT, HandshakeLimit, TlsTransport

__all__ = ["ClientVerifier", "Handler", "HboneRequest", "ServerEvents", "serve_hbone_connection"]

logger = logging.getLogger(__name__)

ClientVerifier = Callable[[bytes | None], Identity]
Handler = Callable[["HboneRequest"], Awaitable[None]]
Address = tuple[str, int]


class ServerEvents(Protocol):
    """Where a server reports what its clients did wrong (`telemetry.peererrors.PeerErrors`);
    each call names the client's and our address."""

    def handshake_failed(self, peer: Address, local: Address, error: str) -> None: ...

    def protocol_error(self, peer: Address, local: Address, code: int, reason: str) -> None:
        """We ended the connection with a GOAWAY for a connection error of the client's."""
        ...

    def stream_reset(self, peer: Address, local: Address, code: int) -> None: ...


class HboneRequest:
    """A CONNECT request on an inbound HBONE connection, waiting for `respond`.

    `authority` is the `:authority` (`host:port`, already checked for shape), `headers` the
    request headers in order (lower-case names), `peer_identity` the client's verified
    identity, `peer_address` and `local_address` the TCP endpoints of the connection.
    """

    def __init__(
        self,
        connection: HboneServerConnection,
        stream: HboneStream,
        authority: str,
        headers: tuple[Header, ...],
    ) -> None:
        self._connection = connection
        self._stream = stream
        self.authority = authority
        self.headers = headers
        self.peer_identity: Identity = connection.client_identity
        self.peer_address = connection.peer_address
        self.local_address = connection.local_address
        self.responded = False

    @property
    def stream_id(self) -> int:
        return self._stream.stream_id

    def header(self, name: str) -> str | None:
        """The first value of request header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def respond(self, status: int, headers: Sequence[Header] = ()) -> HboneStream | None:
        """Answer the CONNECT. 200 returns the tunnel; any other status ends the stream and
        returns None. Raises `HboneStreamError` if the client or connection went away."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.responded:
            raise RuntimeError(f"HBONE request on stream {self.stream_id} was already answered")
        self.responded = True
        stream = self._connection.answer(self._stream, status, headers)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream


class HboneServerConnection(HboneConnection):
    """An accepted HBONE connection: runs the handler for each CONNECT in its own task."""

    _core: HboneServer

    def __init__(
        self,
        tls: TlsTransport,
        client_identity: Identity,
        handler: Handler,
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        max_concurrent_streams: int,
        drain: trio.Event | None,
        events: ServerEvents | None,
    ) -> None:
        super().__init__(
            tls,
            HboneServer(max_concurrent_streams=max_concurrent_streams, clock=trio.current_time),
            client_identity,
            keepalive_interval=keepalive_interval,
            keepalive_timeout=keepalive_timeout,
            drain=drain,
        )
        self.client_identity = client_identity
        self.peer_address = _address(tls.socket.getpeername)
        self.local_address = _address(tls.socket.getsockname)
        self._handler = handler
        self._events = events
        self._handlers: trio.Nursery | None = None
        # The cancel scopes of handlers that have not answered yet, by stream id.
        self._unanswered: dict[int, trio.CancelScope] = {}

    async def serve(self) -> None:
        """Run the connection and its handlers until both are done."""
        # The writer task sends our SETTINGS first thing.
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            await self.run()

    def answer(
        self, stream: HboneStream, status: int, headers: Sequence[Header]
    ) -> HboneStream | None:
        """Send the response to the CONNECT on `stream` (see `HboneRequest.respond`)."""
        # Answered (or trying to): a reset from now on reaches the handler through the stream.
        self._unanswered.pop(stream.stream_id, None)
        if stream.error is not None:
            raise stream.error
        try:
            self._core.respond(stream.stream_id, status, headers)
        except HboneCoreError as e:
            raise self._stream_failure(f"cannot answer the CONNECT: {e}") from None
        self._emit()
        if status == 200:
            return stream
        stream.discard()
        return None

    def _on_request_event(self, event: Event) -> None:
        if isinstance(event, ConnectRequest):
            stream = HboneStream(self, event.stream_id)
            self._track(stream)
            request = HboneRequest(self, stream, event.authority, event.headers)
            scope = self._unanswered[event.stream_id] = trio.CancelScope()
            assert self._handlers is not None
            self._handlers.start_soon(self._handle, request, stream, scope)
        elif isinstance(event, RequestRejected):
            logger.info("HBONE request rejected with %d: %s", event.status, event.reason)
        elif isinstance(event, RequestRefused):
            logger.info("HBONE request refused: %s", event.reason)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if not event.remote and self._events is not None:
            self._events.protocol_error(
                self.peer_address, self.local_address, event.error_code, event.reason
            )
        super()._on_terminated(event)

    def _on_reset(self, event: StreamReset) -> None:
        if event.remote and self._events is not None:
            self._events.stream_reset(self.peer_address, self.local_address, event.error_code)
        super()._on_reset(event)
        scope = self._unanswered.pop(event.stream_id, None)
        if scope is not None:
            scope.cancel()

    def _terminate(self, reason: str) -> None:
        super()._terminate(reason)
        for scope in self._unanswered.values():
            scope.cancel()
        self._unanswered.clear()

    async def _handle(
        self, request: HboneRequest, stream: HboneStream, scope: trio.CancelScope
    ) -> None:
        try:
            with scope:
                await self._handler(request)
        except HboneStreamError as e:
            logger.debug("HBONE stream %d ended with an error: %s", stream.stream_id, e)
        except Exception:
            logger.exception("HBONE handler failed for %s", request.authority)
        finally:
            self._unanswered.pop(stream.stream_id, None)
            if not request.responded and not self.is_closed:
                # A handler that returns without an answer must not leave the client hanging.
                request.responded = True
                with contextlib.suppress(HboneStreamError):
                    self.answer(stream, 503, ())
            stream.reset()
            self._core.finish_request(stream.stream_id)


def _address(getter: Callable[[], Any]) -> tuple[str, int]:
    address = getter()
    return (str(address[0]), int(address[1]))


async def serve_hbone_connection(
    sock: trio.socket.SocketType,
    ssl_context: ssl.SSLContext,
    *,
    verify_client: ClientVerifier,
    handler: Handler,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    handshakes: HandshakeLimit | None = None,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_concurrent_streams: int = SERVER_MAX_CONCURRENT_STREAMS,
    drain: trio.Event | None = None,
    events: ServerEvents | None = None,
) -> None:
    """Serve one accepted TCP connection as an HBONE server until it closes.

    TLS handshake (the context requires a client certificate), ALPN h2, then
    `verify_client(peer_leaf_der)` returns the client identity or raises to refuse it; all
    before any HTTP/2 byte is processed. Each valid CONNECT runs `handler(request)` in its own
    task; a handler that returns without answering gets a 503 sent for it, and its stream is
    reset if still open. Raises `HboneHandshakeError` if the connection could not be set up
    (the socket is closed); returns normally when an established connection ends.
    `handshakes`, shared by the process's listeners, bounds the TLS handshakes in progress.
    `events` hears of failed handshakes, protocol errors and streams the client reset.

    Once `drain` is set the connection sends a graceful GOAWAY and ends when the streams it
    already carries are done.
    """
    no_delay(sock)
    tls = TlsTransport(
        sock,
        ssl_context,
        server_side=True,
        handshake_timeout=handshake_timeout,
        handshakes=handshakes,
    )
    # Before the handshake: a failed one closes the socket.
    peer, local = _address(sock.getpeername), _address(sock.getsockname)
    try:
        async with closed_on_failure(tls):
            identity = await secure_handshake(tls, verify_client, "client")
    except HboneHandshakeError as e:
        if events is not None:
            events.handshake_failed(peer, local, str(e))
        raise
    conn = HboneServerConnection(
        tls,
        identity,
        handler,
        keepalive_interval=keepalive_interval,
        keepalive_timeout=keepalive_timeout,
        max_concurrent_streams=max_concurrent_streams,
        drain=drain,
        events=events,
    )
    await conn.serve()
