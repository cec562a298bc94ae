"""Receive buffers shared by the streams of one connection, reused instead of reallocated.

The reader decrypts into a buffer from a small per-connection pool; each stream queues slices
(views) of it, pinning the buffer, and the buffer goes back to the pool once every slice was
consumed. Fresh 1 MiB buffers per read cost ~40% of HBONE throughput; reuse avoids that.

Buffers start small (an idle tunnel costs little) and grow x4 on every read that fills one, up
to 1 MiB: large reads are what makes TLS in Python fast (one `SSLObject.read` per wakeup drains
many records).
"""

from __future__ import annotations

__all__ = ["BufferPool", "RecvBuffer"]

RECEIVE_MIN = 64 * 1024
RECEIVE_MAX = 1024 * 1024
_POOLED_BUFFERS = 4


class RecvBuffer:
    """A receive buffer and how many queued stream slices still point into it."""

    __slots__ = ("detached", "pins", "pool", "view")

    def __init__(self, pool: BufferPool, size: int) -> None:
        self.pool = pool
        self.view = memoryview(bytearray(size))
        self.pins = 0
        # True once the reader moved on to another buffer: the last unpin recycles this one.
        self.detached = False

    def pin(self) -> None:
        """One more slice of this buffer is queued somewhere."""
        self.pins += 1

    def unpin(self) -> None:
        """A slice was consumed; a detached buffer goes back to its pool with the last one."""
        self.pins -= 1
        if self.pins == 0 and self.detached:
            self.pool.put(self)


class BufferPool:
    """Up to a few free buffers of the current size."""

    __slots__ = ("_free", "size")

    def __init__(self) -> None:
        self._free: list[RecvBuffer] = []
        self.size = RECEIVE_MIN

    def get(self) -> RecvBuffer:
        while self._free:
            buffer = self._free.pop()
            if len(buffer.view) == self.size:
                return buffer
        return RecvBuffer(self, self.size)

    def put(self, buffer: RecvBuffer) -> None:
        buffer.detached = False
        if len(buffer.view) == self.size and len(self._free) < _POOLED_BUFFERS:
            self._free.append(buffer)

    def grow(self) -> None:
        """A read filled a whole buffer: more was waiting, use larger buffers from now on."""
        self.size = min(self.size * 4, RECEIVE_MAX)

    def trim(self) -> None:
        """The connection is idle: drop the free buffers and start small again."""
        self._free.clear()
        self.size = RECEIVE_MIN
