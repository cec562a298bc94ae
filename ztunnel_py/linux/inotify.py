"""inotify(7): being told when a directory changes, instead of looking again and again.

The standard library has no inotify; these are the three libc calls (`inotify_init1`,
`inotify_add_watch`, `inotify_rm_watch`) through ctypes, and the fixed-layout event records
read from the descriptor. Only public kernel and libc interfaces are used.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000  # the kernel's queue overflowed: events were lost
IN_IGNORED = 0x00008000  # the watch is gone (its directory was removed)
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

# Every change to a directory's entries or to a file in it.
DIRECTORY_CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class Event:
    wd: int  # -1 for IN_Q_OVERFLOW
    mask: int
    name: str  # the entry in the watched directory ("" for the directory itself)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


class Inotify:
    """One inotify instance: add and remove watches, wait for events."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: str, mask: int = DIRECTORY_CHANGES | IN_ONLYDIR) -> int:
        """Watch `path` (symbolic links are followed); the watch descriptor. Adding the same
        directory again returns the same descriptor."""
        return _check(
            _libc.inotify_add_watch(self.fd, os.fsencode(path), mask), "inotify_add_watch", path
        )

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; one the kernel already dropped (its directory is gone) is fine."""
        if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, "inotify_rm_watch")

    def read(self, timeout: float | None) -> list[Event]:
        """The events queued now, waiting up to `timeout` seconds for the first (None:
        forever); an empty list when none came."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(None if timeout is None else max(0, int(timeout * 1000))):
            return []
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            events.append(Event(wd, mask, name))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
