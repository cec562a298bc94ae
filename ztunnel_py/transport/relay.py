"""Byte relays: copy both ways between two streams until both directions end.

`relay(a, b)` works on any pair of `ByteStream`s (an `HboneStream`, a `SocketByteStream`, a
`trio.SocketStream`): one task per direction, the end of one direction is passed on as a
half-close (`send_eof`), and both streams are closed when done or when either side fails.
Reads are large (up to 256 KiB) and go into reused buffers: the per-chunk interpreter cost, not
the byte count, is what a Python relay pays for (docs/performance.md, "The limit is per-chunk
interpreter work, not crypto").

`splice_relay(a, b)` is the plaintext TCP<->TCP variant (passthrough to non-mesh destinations):
`os.splice` moves the bytes socket -> pipe -> socket inside the kernel, at a third of the CPU of
a user-space copy (docs/performance.md, "`os.splice` for plaintext passthrough"). It never
passes SPLICE_F_MORE: that flag corks the output socket and stalled a 1-byte round trip for
0.41 s. With an `idle_timeout` it ends (as a
failure) once no byte moved either way for that long: inbound plaintext comes from anyone who
can reach a pod, and an idle connection would otherwise hold two descriptors forever.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import trio

from ztunnel_py.transport.sockio import recv_into

__all__ = [
    "ByteStream",
    "ForwardsInput",
    "InputWatch",
    "ReceiveWoken",
    "RelayError",
    "Resettable",
    "SendsNowait",
    "SocketByteStream",
    "WakesReceiver",
    "WatchesInput",
    "close_with_reset",
    "relay",
    "splice_relay",
]

Bytes = bytes | bytearray | memoryview

RELAY_CHUNK = 1024 * 1024
_SOCKET_BUFFER_MIN = 16 * 1024
_PIPE_SIZE = 1024 * 1024
_SPLICE_CHUNK = 1024 * 1024
# How long closing both sides may take once a relay is over.
_CLOSE_GRACE = 1.0
_LINGER_ZERO = struct.pack("ii", 1, 0)


class ByteStream(Protocol):
    """What the relay needs from each side.

    `receive_some` may return a view into a buffer the stream reuses: the relay finishes with
    it (sends it on) before receiving again.
    """

    async def receive_some(self, max_bytes: int | None = None) -> Bytes: ...

    async def send_all(self, data: Bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Resettable(Protocol):
    """A stream that can abort instead of closing cleanly (`HboneStream`, `SocketByteStream`)."""

    def reset(self) -> None: ...


@runtime_checkable
class SendsNowait(Protocol):
    """A stream that can take bytes without waiting (`SocketByteStream`, `HboneStream`).

    `send_nowait` takes as much of `data` as can go without waiting and returns how much that
    was (0: call `send_all` for the rest). It never checkpoints, and what it took reaches the
    peer in order whatever happens to the caller afterwards: a writer that must not cut a
    message needs no shield from cancellation for it. Failures raise as `send_all`'s do.
    """

    def send_nowait(self, data: Bytes) -> int: ...


InputWatch = Callable[[bool, Exception | None], None]


class ReceiveWoken(Exception):
    """A `receive_some` ended early by `WakesReceiver.wake_receiver`: nothing was taken."""


@runtime_checkable
class WakesReceiver(Protocol):
    """A stream whose `receive_some` another task can end early without a cancel scope
    (`HboneStream`).

    `wake_receiver()` makes the `receive_some` in progress raise `ReceiveWoken`, leaving what
    is queued for the next call; with no `receive_some` in progress it does nothing. A reader
    that must sometimes be told to look at its state again saves a cancel scope per read (two
    per proxied request, a tenth of the waypoint's CPU) this way.
    """

    def wake_receiver(self) -> None: ...


@runtime_checkable
class WatchesInput(Protocol):
    """A stream that can say, without a task waiting in `receive_some`, when input arrives
    (`HboneStream`).

    `watch_input(callback)` calls `callback` once, from whichever task delivers it, when the
    next thing a `receive_some` would return or raise arrives: `(False, None)` for data,
    `(True, None)` for the peer's end of stream, `(False, error)` for a failure. If something
    is there already it returns False and does not watch (read it instead).
    `watch_input(None)` stops watching.
    """

    def watch_input(self, callback: InputWatch | None) -> bool: ...


@runtime_checkable
class ForwardsInput(Protocol):
    """A stream whose arriving data can go straight on from the task that delivers it
    (`HboneStream`).

    After `forward_input(sink)`, data that arrives while a task waits in `receive_some` with
    nothing queued is first offered to `sink`, which takes what it can without waiting and
    returns how much (as `SendsNowait.send_nowait`); only the rest is queued for
    `receive_some`, so a relay moving small messages needs no wakeup for them. A sink that
    raises is dropped and the data queued, for the reader to meet the failure itself.
    `forward_input(None)` stops it.
    """

    def forward_input(self, sink: Callable[[memoryview], int] | None) -> None: ...


class RelayError(Exception):
    """A relay stopped on an error; both streams are closed.

    `a_to_b`/`b_to_a` count the bytes delivered before the failure; the cause is chained.
    """

    def __init__(self, reason: str, a_to_b: int, b_to_a: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.a_to_b = a_to_b
        self.b_to_a = b_to_a


class SocketByteStream:
    """A connected trio socket as a `ByteStream`, receiving into one reused buffer (and with
    TCP_NODELAY set).

    The buffer starts at 16 KiB and doubles after each read that fills it, up to `max_buffer`:
    small exchanges stay cheap, bulk transfers get large reads. `receive_some` returns a view
    valid until the next call. After a read that left the buffer part empty (the socket was
    drained) the next one waits for readability before reading: in request/response traffic
    the next message comes a round trip later, and reading at once would only find nothing.
    """

    def __init__(self, sock: trio.socket.SocketType, *, max_buffer: int = RELAY_CHUNK) -> None:
        _no_delay(sock)
        self.socket = sock
        self._max_buffer = max_buffer
        self._buffer = bytearray(min(_SOCKET_BUFFER_MIN, max_buffer))
        self._drained = False

    async def receive_some(self, max_bytes: int | None = None) -> memoryview:
        buffer = self._buffer
        view = memoryview(buffer)
        if max_bytes is not None and max_bytes < len(buffer):
            view = view[:max_bytes]
        count = await recv_into(self.socket, view, wait_first=self._drained)
        self._drained = 0 < count < len(view)
        if count == len(buffer) < self._max_buffer:
            self._buffer = bytearray(min(2 * len(buffer), self._max_buffer))
        return view[:count]

    async def send_all(self, data: Bytes) -> None:
        view = memoryview(data).cast("B")
        send = self.socket.send
        while view:
            view = view[await send(view) :]

    def send_nowait(self, data: Bytes) -> int:
        """What the socket's buffer takes now (see `SendsNowait`): a write(2) on the
        non-blocking socket, without the scheduler round trip a trio send makes."""
        try:
            return os.write(self.socket.fileno(), data)
        except BlockingIOError:
            return 0

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as e:
            # The peer may already have gone; nothing is left to half-close then.
            if e.errno != errno.ENOTCONN:
                raise

    def reset(self) -> None:
        close_with_reset(self.socket)

    async def aclose(self) -> None:
        self.socket.close()
        await trio.lowlevel.checkpoint()


def close_with_reset(sock: trio.socket.SocketType) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees an error, not an EOF, and this side
    keeps no TIME_WAIT."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


def _no_delay(sock: trio.socket.SocketType) -> None:
    """Relayed bytes go out at once: Nagle would hold back small writes (ztunnel sets
    TCP_NODELAY on every socket)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def relay(a: ByteStream, b: ByteStream, *, chunk: int = RELAY_CHUNK) -> tuple[int, int]:
    """Copy a->b and b->a until both directions ended; returns (bytes a->b, bytes b->a).

    Each side's EOF becomes a half-close of the other. Both streams are closed at the end.
    Raises `RelayError` (cause chained) if either side fails; both are then reset (if they
    can be) and closed, so each peer sees the failure.
    """
    counts = [0, 0]
    failures: list[Exception] = []

    async def pump(src: ByteStream, dst: ByteStream, index: int) -> None:
        receive = src.receive_some
        send = dst.send_all
        # What the destination takes at once needs no scheduler trip (the receive that comes
        # next is the loop's checkpoint); `send_all` waits for the rest.
        send_nowait = dst.send_nowait if isinstance(dst, SendsNowait) else None
        forwards = send_nowait is not None and isinstance(src, ForwardsInput)
        if forwards:
            assert send_nowait is not None and isinstance(src, ForwardsInput)
            nowait = send_nowait

            def forward(view: memoryview) -> int:
                taken = nowait(view)
                counts[index] += taken
                return taken

            src.forward_input(forward)
        try:
            while True:
                data = await receive(chunk)
                if not data:
                    await dst.send_eof()
                    return
                sent = 0 if send_nowait is None else send_nowait(data)
                if sent < len(data):
                    await send(memoryview(data)[sent:] if sent else data)
                counts[index] += len(data)
        except Exception as e:
            failures.append(e)
            nursery.cancel_scope.cancel()
        finally:
            if forwards:
                assert isinstance(src, ForwardsInput)
                src.forward_input(None)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, 0)
            nursery.start_soon(pump, b, a, 1)
    finally:
        with trio.move_on_after(_CLOSE_GRACE, shield=True):
            for stream in (a, b):
                with contextlib.suppress(Exception):
                    # A failure is passed on as a reset, never as a clean end of stream.
                    if failures and isinstance(stream, Resettable):
                        stream.reset()
                    await stream.aclose()
    if failures:
        raise RelayError(f"relay failed: {failures[0]}", counts[0], counts[1]) from failures[0]
    return counts[0], counts[1]


async def splice_relay(
    a: trio.socket.SocketType, b: trio.socket.SocketType, *, idle_timeout: float | None = None
) -> tuple[int, int]:
    """`relay` for two plain TCP sockets, with `os.splice` through a pipe per direction.

    Returns (bytes a->b, bytes b->a); closes both sockets at the end. Raises `RelayError`, also
    when no byte moved either way for `idle_timeout` seconds.
    """
    _no_delay(a)
    _no_delay(b)
    counts = [0, 0]
    failures: list[Exception] = []
    # Every chunk moved pushes the deadline on; reaching it cancels both directions.
    idle = trio.CancelScope()
    progress: Callable[[], None] | None = None
    if idle_timeout is not None:
        timeout = idle_timeout

        def progress() -> None:
            idle.deadline = trio.current_time() + timeout

        progress()

    async def guarded(src: trio.socket.SocketType, dst: trio.socket.SocketType, index: int) -> None:
        try:
            await _splice_one_way(src, dst, counts, index, progress)
        except Exception as e:
            failures.append(e)
            nursery.cancel_scope.cancel()

    try:
        with idle:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guarded, a, b, 0)
                nursery.start_soon(guarded, b, a, 1)
    finally:
        a.close()
        b.close()
    if idle.cancelled_caught:
        failures.append(TimeoutError(f"no data either way for {idle_timeout:g} s"))
    if failures:
        error = failures[0]
        raise RelayError(f"relay failed: {error}", counts[0], counts[1]) from error
    return counts[0], counts[1]


async def _splice_one_way(
    src: trio.socket.SocketType,
    dst: trio.socket.SocketType,
    counts: list[int],
    index: int,
    on_progress: Callable[[], None] | None,
) -> None:
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            # Larger pipes move more per call; the system limit may refuse, which is fine.
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        src_fd, dst_fd = src.fileno(), dst.fileno()
        while True:
            try:
                pending = os.splice(src_fd, write_end, _SPLICE_CHUNK, flags=flags)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            if pending == 0:
                dst.shutdown(socket.SHUT_WR)
                return
            while pending:
                try:
                    moved = os.splice(read_end, dst_fd, pending, flags=flags)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
                    continue
                pending -= moved
                counts[index] += moved
            if on_progress is not None:
                on_progress()
            # Data kept coming without a wait: let other tasks run.
            await trio.lowlevel.checkpoint()
    finally:
        os.close(read_end)
        os.close(write_end)
