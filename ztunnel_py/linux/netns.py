"""Entering network namespaces from a thread: setns(2), identity of a namespace by inode.

The lowest shared layer for every part that works inside pod namespaces: the capture setup
(`redirect/`), the agent's per-pod sockets (`transport/podsockets.py`) and the testbed's probes.
`setns` changes only the calling thread's namespace, so `entered` holds a lock and always returns
the thread to the namespace it came from.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000

_setns_lock = threading.Lock()
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) for the calling thread (os.setns arrives only in Python 3.12)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NetnsError(Exception):
    """A pod network namespace could not be entered or a socket could not be made in it."""


def _own_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def netns_inode(fd: int) -> tuple[int, int]:
    """(device, inode) of a netns fd: two fds name the same netns exactly when these are equal."""
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


@contextlib.contextmanager
def entered(netns_fd: int) -> Iterator[None]:
    """Run the body with the calling thread inside `netns_fd`, then return to where it was."""
    with _setns_lock:
        home = _own_netns_fd()
        try:
            try:
                setns(netns_fd)
            except OSError as e:
                raise NetnsError(f"cannot enter pod network namespace: {e}") from e
            try:
                yield
            finally:
                setns(home)
        finally:
            os.close(home)
