"""The client side: `connect_hbone` sets up a connection, `open_stream` opens CONNECT tunnels."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import trio
from cryptography import x509

from ztunnel_py.model.identity import Identity
from ztunnel_py.protocol.hbone import (
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    ConnectionClosedError,
    ConnectionTerminated,
    Event,
    HboneClient,
    Header,
    Response,
    StreamLimitError,
)
from ztunnel_py.transport.hbone.connection import (
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    HboneConnection,
    closed_on_failure,
    no_delay,
    secure_handshake,
)
from ztunnel_py.transport.hbone.errors import (
    HboneHandshakeError,
    HboneStatusError,
    HboneUnavailableError,
)
from ztunnel_py.transport.hbone.stream import HboneStream
from ztunnel_py.transport.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsTransport

__all__ = ["HboneClientConnection", "ServerVerifier", "connect_hbone"]

ServerVerifier = Callable[[bytes | None, Sequence[Identity]], Identity]


class HboneClientConnection(HboneConnection):
    """A client HBONE connection: opens CONNECT tunnels to one peer."""

    _core: HboneClient

    @property
    def is_ready(self) -> bool:
        """True while new streams may be opened (not closed, no GOAWAY, no certificate of the
        connection expired)."""
        return (
            not self.is_closed
            and not self._core.is_draining
            and (self.expires_at is None or trio.current_time() < self.expires_at)
        )

    @property
    def available_streams(self) -> int:
        """How many more streams may be opened now: min(our limit, the peer's
        MAX_CONCURRENT_STREAMS) minus the open ones; 0 when closed or draining."""
        return 0 if self.is_closed else self._core.available_streams

    @property
    def peer_max_concurrent_streams(self) -> int:
        return self._core.peer_max_concurrent_streams

    async def open_stream(self, authority: str, headers: Sequence[Header] = ()) -> HboneStream:
        """CONNECT to `authority` (`ip:port`) with `headers`; returns the tunnel after a 200.

        Waits for the answer without a time limit of its own (wrap it in `trio.fail_after`);
        cancelling resets the stream. Raises `HboneStatusError` for any other status,
        `HboneUnavailableError` if this connection takes no new stream, `HboneStreamError` if
        it breaks meanwhile, `ValueError` for a malformed authority or header.
        """
        if self.is_closed:
            raise HboneUnavailableError(f"HBONE connection is closed: {self.closed_reason}")
        try:
            stream_id = self._core.start_connect(authority, headers)
        except (ConnectionClosedError, StreamLimitError) as e:
            raise HboneUnavailableError(str(e)) from None
        stream = HboneStream(self, stream_id)
        self._track(stream)
        self._emit(wake_writer=False)
        try:
            await self.flush()
            status = await stream.wait_for_response()
        except BaseException:
            stream.reset()
            raise
        if status != 200:
            stream.discard()
            raise HboneStatusError(status, stream.response_headers)
        return stream

    def _on_request_event(self, event: Event) -> None:
        if isinstance(event, Response):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.deliver_response(event.status, event.headers)

    async def exchange_settings(self) -> None:
        """Connection setup, before `run`: send our preface and SETTINGS, then read until the
        peer's SETTINGS arrived (so its stream limit is known). Raises `HboneHandshakeError`."""
        await self.tls.send_all(self._core.data_to_send())
        buffer = self._buffers.get()
        while not self._core.peer_settings_received:
            if self.is_closed:
                raise HboneHandshakeError(f"HTTP/2 setup failed: {self.closed_reason}")
            count = await self.tls.receive_into(buffer.view)
            if not count:
                raise HboneHandshakeError(
                    "peer closed the connection right after the TLS handshake, before HTTP/2 "
                    "SETTINGS (did it refuse our identity?)"
                )
            events = self._core.receive_data(buffer.view[:count])
            for event in events:
                if isinstance(event, ConnectionTerminated):
                    await self.tls.send_all(self._core.data_to_send())
                    raise HboneHandshakeError(f"HTTP/2 setup failed: {event.reason}")
            self._dispatch(events, buffer)
            if buffer.pins:
                buffer.detached = True
                buffer = self._buffers.get()
        if self._core.bytes_to_send:
            await self.tls.send_all(self._core.data_to_send())


def _expiry(peer_leaf_der: bytes | None, not_after: datetime | None) -> float | None:
    """When the first of the two certificates expires, on the trio clock."""
    ends = [] if not_after is None else [not_after]
    if peer_leaf_der:
        ends.append(x509.load_der_x509_certificate(peer_leaf_der).not_valid_after_utc)
    if not ends:
        return None
    return trio.current_time() + (min(ends) - datetime.now(UTC)).total_seconds()


async def connect_hbone(
    sock: trio.socket.SocketType,
    ssl_context: ssl.SSLContext,
    *,
    expected_identities: Sequence[Identity],
    verify: ServerVerifier | None,
    nursery: trio.Nursery,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    max_streams: int = DEFAULT_MAX_STREAMS_PER_CONNECTION,
    not_after: datetime | None = None,
) -> HboneClientConnection:
    """Set up a client HBONE connection on an already-connected socket.

    Runs the TLS handshake (no SNI), requires ALPN h2, then calls
    `verify(peer_leaf_der, expected_identities)` (e.g. `identity.tls.verify_server_identity`)
    before any HTTP/2 byte; it returns the peer identity or raises to refuse it. `verify=None`
    skips the identity check. Then exchanges HTTP/2 SETTINGS, so the peer's stream limit is
    known, and starts the connection's tasks in `nursery`. The whole setup is bounded by
    `handshake_timeout`. Raises `HboneHandshakeError`; the socket is closed on failure.

    The connection is retired (it takes no new stream, and closes once its streams are done)
    when the earlier of the server's certificate and `not_after` (the end of our own
    certificate) passes, so no tunnel is opened on a connection authenticated by a certificate
    that has expired since.
    """
    no_delay(sock)
    tls = TlsTransport(sock, ssl_context, server_side=False, handshake_timeout=handshake_timeout)

    def verify_server(der: bytes | None) -> Identity | None:
        return None if verify is None else verify(der, expected_identities)

    async with closed_on_failure(tls):
        try:
            with trio.fail_after(handshake_timeout):
                identity = await secure_handshake(tls, verify_server, "server")
                conn = HboneClientConnection(
                    tls,
                    HboneClient(max_streams=max_streams),
                    identity,
                    keepalive_interval=keepalive_interval,
                    keepalive_timeout=keepalive_timeout,
                    expires_at=_expiry(tls.peer_leaf_der(), not_after),
                )
                await conn.exchange_settings()
        except trio.TooSlowError:
            raise HboneHandshakeError(
                f"HBONE connection setup timed out after {handshake_timeout:g}s"
            ) from None
    await nursery.start(conn.run)
    return conn
