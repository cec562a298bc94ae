"""Reading a connected non-blocking trio socket with less machinery per read than trio's own.

`trio.socket.SocketType.recv_into` wraps every read in an async context manager that a
would-block read leaves through an exception; on the data path that is paid once or twice per
message (a speculative read that finds nothing, then the read after the wakeup). `recv_into`
here keeps trio's semantics (a cancellation point before the read, a schedule point after a
read that did not wait, the wait for readability otherwise) with one `readv(2)` per attempt
and no context manager.
"""

from __future__ import annotations

import os

import trio

__all__ = ["recv_into"]


async def recv_into(
    sock: trio.socket.SocketType, buffer: memoryview, *, wait_first: bool = False
) -> int:
    """Read what `sock` holds into `buffer` (waiting for it if nothing is there); returns the
    count, 0 at end of stream. Errors raise as `recv_into`'s do (`OSError`).

    `wait_first`: wait for readability before the first attempt, for a reader that just
    drained the socket and expects the next message later (a request/response exchange): the
    read that would find nothing, and the exception it raises, are saved.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    fd = sock.fileno()
    buffers = [buffer]
    if not wait_first:
        try:
            count = os.readv(fd, buffers)
        except BlockingIOError:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return count
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.readv(fd, buffers)
        except BlockingIOError:
            pass
