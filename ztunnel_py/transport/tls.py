"""TLS for the data path: `ssl.MemoryBIO` + `SSLObject` over a connected trio socket.

Not `trio.SSLStream`: it returns one 16 KiB record per `receive_some`, which capped a TLS hop
near 1.6 Gbit/s on our VM, while draining every buffered record per wakeup and encrypting each
large write in one call reached 5-6 Gbit/s (docs/performance.md, "TLS on `MemoryBIO`"). So:

- `receive_into` reads as much ciphertext as the socket has (up to the caller's buffer size),
  then decrypts every complete record into the caller's buffer before returning;
- `send_all` encrypts the whole buffer with one `SSLObject.write` and sends the ciphertext
  (or, split: `encrypt` now, in the producer's task, and `flush` later, in a writer task);
- buffers are reused, never allocated per call (except the ciphertext bytes `MemoryBIO.read`
  returns, which the ssl module gives no way to avoid).

Pending handshakes stay cheap (an attacker can open many and never finish them). A server
holds the client's first TLS record, its ClientHello, in a buffer of the record's own size
before OpenSSL sees a byte: an `SSLObject` and its buffers (about 45 KB once the handshake
starts) exist only for clients that sent a whole ClientHello. Handshake reads use small
buffers; the large receive buffer is grown by the first bulk read. And a `HandshakeLimit`
bounds the handshakes past the ClientHello: when it is full, a new one takes the place of the
oldest, which has had the longest to finish (real clients finish in milliseconds, so the
oldest are the stalled ones): a flood of stalled handshakes cannot lock out real clients.

Reads never send: a TLS 1.3 post-handshake message that needs an answer (KeyUpdate) is answered
with the next `send_all`. One task may send while another receives; two concurrent senders (or
receivers) raise `trio.BusyResourceError`.

All failures surface as `TlsError` with a reason a person can act on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import ssl
from collections.abc import Callable
from typing import cast

import trio

from ztunnel_py.transport.sockio import recv_into

__all__ = ["DEFAULT_MAX_HANDSHAKES", "HandshakeLimit", "TlsError", "TlsTransport"]

Bytes = bytes | bytearray | memoryview

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_HANDSHAKES = 128
_HANDSHAKE_READ = 4 * 1024
# A TLS record: content type, legacy version (3, x), 16-bit length of at most 2^14 bytes.
_RECORD_HEADER = 5
_CONTENT_HANDSHAKE = 22
_MAX_RECORD = 1 << 14
DEFAULT_RECEIVE_SIZE = 256 * 1024
# How long `aclose` may spend delivering close_notify to a peer that is not reading.
_CLOSE_NOTIFY_GRACE = 0.1


# typeshed types SSLObject.read() as returning bytes; given a buffer it returns the count.
_ReadInto = Callable[[int, memoryview], int]


class TlsError(Exception):
    """A TLS failure: handshake, alert, bad record, or the peer vanishing mid-connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HandshakeLimit:
    """At most `limit` server handshakes past the ClientHello at a time, shared by every
    listener of a process; a new handshake beyond it abandons the oldest one."""

    def __init__(self, limit: int = DEFAULT_MAX_HANDSHAKES) -> None:
        if limit < 1:
            raise ValueError("the handshake limit must be at least 1")
        self.limit = limit
        self.abandoned = 0
        # In start order (dicts keep insertion order): the first is the oldest.
        self._active: dict[int, trio.CancelScope] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    def admit(self, scope: trio.CancelScope) -> None:
        """Count a handshake (run under `scope`) in, abandoning the oldest if full."""
        if len(self._active) >= self.limit:
            oldest = next(iter(self._active))
            self._active.pop(oldest).cancel()
            self.abandoned += 1
        self._active[id(scope)] = scope

    def release(self, scope: trio.CancelScope) -> None:
        self._active.pop(id(scope), None)


def _describe(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_message:
        return f"certificate verification failed: {error.verify_message}"
    reason = error.reason or ""
    if "ALERT" in reason:
        return f"peer sent TLS alert {reason.split('ALERT_', 1)[-1].lower().replace('_', ' ')}"
    return reason.lower().replace("_", " ") if reason else str(error)


def _describe_os_error(error: OSError) -> str:
    if error.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection reset by peer"
    return f"socket error: {error.strerror or error}"


class TlsTransport:
    """One TLS connection over a connected `trio.socket` socket.

    Create it, `await handshake()`, check the peer (`peer_leaf_der`, `alpn_protocol`), then
    `receive_into`/`receive_some` and `send_all`; `send_eof` for close_notify; `aclose`.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        ssl_context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        handshakes: HandshakeLimit | None = None,
    ) -> None:
        self._sock = sock
        self._context = ssl_context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._handshake_timeout = handshake_timeout
        self._handshakes = handshakes
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if not server_side:
            self._start_tls()
        self._ciphertext = bytearray()
        self._plaintext = bytearray()
        self._held = bytearray()
        self._unsent = memoryview(b"")
        self._handshake_done = False
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._sending = False
        self._receiving = False

    _ssl: ssl.SSLObject  # a server's is created once the client's first record is in

    def _start_tls(self) -> None:
        self._ssl = self._context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=self._server_side,
            server_hostname=self._server_hostname,
        )

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol agreed in the handshake (None if none)."""
        return self._ssl.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        return self._ssl.version()

    @property
    def cipher(self) -> str | None:
        cipher = self._ssl.cipher()
        return cipher[0] if cipher else None

    def trim(self) -> None:
        """Release receive memory grown by bulk reads (call when the connection is idle)."""
        self._ciphertext = bytearray()
        self._plaintext = bytearray()

    def peer_leaf_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), or None if it presented none."""
        return self._ssl.getpeercert(binary_form=True)

    # -- handshake -----------------------------------------------------------------------

    async def handshake(self) -> None:
        """Run the TLS handshake; raises `TlsError` on failure or after `handshake_timeout`.

        The socket is left open on failure: the caller closes it with `aclose`.
        """
        try:
            with trio.fail_after(self._handshake_timeout):
                await self._handshake()
        except trio.TooSlowError:
            raise TlsError(f"TLS handshake timed out after {self._handshake_timeout:g}s") from None

    async def _handshake(self) -> None:
        if not self._server_side:
            await self._exchange()
            return
        await self._receive_first_record()
        self._start_tls()
        if self._handshakes is None:
            await self._exchange()
            return
        scope = trio.CancelScope()
        self._handshakes.admit(scope)
        try:
            with scope:
                await self._exchange()
        finally:
            self._handshakes.release(scope)
        if scope.cancelled_caught:
            raise TlsError(
                f"TLS handshake abandoned: more than {self._handshakes.limit} handshakes in "
                "progress, and this one was the oldest"
            )

    async def _receive_first_record(self) -> None:
        """Server side: wait for the client's whole first record (its ClientHello), reading
        exactly its size, and queue it for OpenSSL."""
        header = await self._receive_exactly(_RECORD_HEADER)
        length = int.from_bytes(header[3:5], "big")
        if header[0] != _CONTENT_HANDSHAKE or header[1] != 3:
            raise TlsError(f"the client did not start a TLS handshake (it sent {bytes(header)!r})")
        if not 0 < length <= _MAX_RECORD:
            raise TlsError(f"the client's first TLS record claims {length} bytes")
        self._incoming.write(header)
        self._incoming.write(await self._receive_exactly(length))

    async def _receive_exactly(self, size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        got = 0
        while got < size:
            try:
                count = await self._sock.recv_into(view[got:], size - got)
            except OSError as e:
                raise TlsError(_describe_os_error(e)) from e
            if not count:
                raise TlsError("peer closed the connection during the TLS handshake")
            got += count
        return data

    async def _exchange(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._receive_ciphertext(_HANDSHAKE_READ):
                    raise TlsError("peer closed the connection during the TLS handshake") from None
            except ssl.SSLError as e:
                # Deliver the alert that tells the peer why, if we can.
                await self._flush_best_effort()
                raise TlsError(f"TLS handshake failed: {_describe(e)}") from e
        await self._flush()
        self._handshake_done = True

    # -- receiving -----------------------------------------------------------------------

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill `buffer` with decrypted bytes; returns how many, 0 at end of stream.

        Waits for the socket only when no complete record is buffered, then decrypts every
        complete record that fits. End of stream is the peer's close_notify, or the TCP
        connection closing without one (which TLS 1.3 peers commonly do).
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this TLS stream")
        self._receiving = True
        try:
            return await self._receive_into(buffer)
        finally:
            self._receiving = False

    async def _receive_into(self, buffer: memoryview) -> int:
        self._check_usable()
        if self._held:
            await trio.lowlevel.checkpoint()
            return self._from_held(buffer)
        count = self._decrypt_into(buffer)
        if count or self._eof_received:
            await trio.lowlevel.checkpoint()
            return count
        # Nothing buffered: wait for the socket (a checkpoint) until a record completes.
        while True:
            if not await self._receive_ciphertext(len(buffer)):
                count = self._decrypt_into(buffer)
                self._eof_received = True
                return count
            count = self._decrypt_into(buffer)
            if count or self._eof_received:
                return count

    async def receive_some(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> memoryview:
        """Like `receive_into`, into a buffer owned by this transport.

        The view is valid until the next `receive_some` call; empty at end of stream.
        """
        if len(self._plaintext) != max_bytes:
            self._plaintext = bytearray(max_bytes)
        view = memoryview(self._plaintext)
        return view[: await self.receive_into(view)]

    def _from_held(self, buffer: memoryview) -> int:
        count = min(len(buffer), len(self._held))
        buffer[:count] = self._held[:count]
        del self._held[:count]
        return count

    def _decrypt_into(self, buffer: memoryview) -> int:
        total = 0
        size = len(buffer)
        incoming = self._incoming
        pending = self._ssl.pending
        read = cast(_ReadInto, self._ssl.read)
        try:
            # With no ciphertext left, no end of stream written and no decrypted byte held,
            # a read can only fail with SSLWantReadError: not calling it spares building and
            # catching that exception, once or twice per received message.
            while total < size and (incoming.pending or incoming.eof or pending()):
                count = read(size - total, buffer[total:])
                if not count:
                    # The ssl module reports a received close_notify as a 0-byte read.
                    self._eof_received = True
                    break
                total += count
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._eof_received = True
        except ssl.SSLError as e:
            raise TlsError(_describe(e)) from e
        return total

    async def _receive_ciphertext(self, size: int) -> int:
        if len(self._ciphertext) < size:
            self._ciphertext = bytearray(size)
        view = memoryview(self._ciphertext)
        if 0 < size < len(view):
            view = view[:size]
        try:
            count = await recv_into(self._sock, view)
        except OSError as e:
            raise TlsError(_describe_os_error(e)) from e
        if count:
            self._incoming.write(view[:count])
        else:
            self._incoming.write_eof()
        return count

    # -- sending -------------------------------------------------------------------------

    async def send_all(self, data: Bytes) -> None:
        """Encrypt all of `data` in one write and send it (with anything TLS queued itself)."""
        self.encrypt(data)
        await self.flush()

    def encrypt(self, data: Bytes) -> None:
        """Encrypt `data` now (the buffer is free on return); `flush` sends the result."""
        self._check_usable()
        if self._eof_sent:
            raise TlsError("cannot send after send_eof")
        if data:
            try:
                self._ssl.write(data)
            except ssl.SSLError as e:
                raise TlsError(_describe(e)) from e

    @property
    def pending_output(self) -> int:
        """Encrypted bytes not yet handed to the socket."""
        return self._outgoing.pending + len(self._unsent)

    async def flush(self) -> None:
        """Send every encrypted byte to the socket."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._check_usable()
        self._sending = True
        try:
            await self._flush()
        finally:
            self._sending = False

    def flush_nowait(self) -> None:
        """Send encrypted bytes as far as the socket takes them now, without waiting (a no-op
        while another task sends: it takes them along). What is left waits for `flush`."""
        outgoing = self._outgoing
        if self._sending or not (self._unsent or outgoing.pending):
            return
        self._check_usable()
        fd = self._sock.fileno()
        try:
            while self._unsent or outgoing.pending:
                if not self._unsent:
                    self._unsent = memoryview(outgoing.read())
                self._unsent = self._unsent[os.write(fd, self._unsent) :]
        except BlockingIOError:
            pass
        except OSError as e:
            raise TlsError(_describe_os_error(e)) from e

    async def send_eof(self) -> None:
        """Send close_notify: we write no more, but can still receive (TLS 1.3 half-close)."""
        if self._eof_sent:
            return
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this TLS stream")
        self._check_usable()
        self._eof_sent = True
        self._sending = True
        try:
            self._queue_close_notify()
            await self._flush()
        finally:
            self._sending = False

    def _queue_close_notify(self) -> None:
        # The ssl module's unwrap() also tries to read the peer's close_notify, and OpenSSL
        # then refuses application data already buffered: decrypt that first and hold it.
        while self._incoming.pending or self._ssl.pending():
            chunk = bytearray(DEFAULT_RECEIVE_SIZE)
            count = self._decrypt_into(memoryview(chunk))
            if not count:
                break
            self._held += memoryview(chunk)[:count]
        self._unwrap()

    def _unwrap(self) -> None:
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # Our close_notify is queued; the peer's has not arrived.
        except ssl.SSLError as e:
            # OpenSSL queues close_notify before it looks at what the peer sent; a complaint
            # about the peer's bytes does not undo it.
            if self._outgoing.pending == 0:
                raise TlsError(_describe(e)) from e

    async def _flush(self) -> None:
        # Ciphertext already taken from the BIO is kept in `_unsent` until the socket took
        # it, so a cancelled flush resumes where it stopped instead of corrupting the stream.
        outgoing = self._outgoing
        send = self._sock.send
        try:
            while self._unsent or outgoing.pending:
                if not self._unsent:
                    self._unsent = memoryview(outgoing.read())
                self._unsent = self._unsent[await send(self._unsent) :]
        except OSError as e:
            raise TlsError(_describe_os_error(e)) from e

    async def _flush_best_effort(self) -> None:
        with trio.move_on_after(_CLOSE_NOTIFY_GRACE, shield=True), contextlib.suppress(TlsError):
            await self._flush()

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream is closed")

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send close_notify if the handshake completed (briefly, best effort) and close."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._handshake_done and not self._eof_sent and not self._sending:
            self._eof_sent = True
            with contextlib.suppress(TlsError):
                self._unwrap()
                await self._flush_best_effort()
        self._closed = True
        self._sock.close()
        await trio.lowlevel.checkpoint()
