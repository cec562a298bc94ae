"""The agent's enrollment server: pods arrive and leave over a Unix SOCK_SEQPACKET socket.

Each connection gets a ZdsHello, then any number of requests, each answered by an Ack (an
empty error is an ACK, a non-empty one a NACK). A bad message is NACKed and the connection
closed; the server keeps serving everyone else, also through a shortage of descriptors
(`transport/accept.py`).

A snapshot belongs to one connection, as in ztunnel: the pods added or kept on it before its
`SnapshotSent` are the ones the enrolling side still knows, and the handler reconciles with
that list (`EnrollHandler.snapshot_sent`). A second `SnapshotSent`, or a keep after the
snapshot, is NACKed.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import stat
from typing import Protocol

import trio

from ztunnel_py.protocol.zds import (
    MAX_MESSAGE,
    AddPod,
    DelPod,
    KeepPod,
    PodInfo,
    SnapshotSent,
    ZdsError,
    decode_request,
    encode_ack,
    encode_hello,
)
from ztunnel_py.transport.accept import serve_connections

log = logging.getLogger("ztunnel_py.enroll")

_FD_SPACE = socket.CMSG_SPACE(4 * 4)


class EnrollRefused(Exception):
    """The handler could not enroll the pod; the text is sent back as the NACK."""


class EnrollHandler(Protocol):
    async def add_pod(self, info: PodInfo, netns_fd: int) -> None:
        """Enroll; takes ownership of netns_fd. Raise EnrollRefused to NACK."""

    async def del_pod(self, uid: str) -> None:
        """Unenroll; raise EnrollRefused for an unknown pod."""

    async def snapshot_sent(self, named: frozenset[str]) -> None:
        """The enrolling side sent its snapshot: `named` are the uids it added or kept."""


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


async def _serve_connection(conn: trio.socket.SocketType, handler: EnrollHandler) -> None:
    named: set[str] = set()  # this connection's snapshot
    snapshot_sent = False
    with conn:
        await conn.send(encode_hello())
        while True:
            data, ancdata, flags, _ = await conn.recvmsg(
                MAX_MESSAGE, _FD_SPACE, socket.MSG_CMSG_CLOEXEC
            )
            fds = _fds_from(ancdata)
            if not data and not fds:
                return
            truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
            try:
                req = decode_request(data, fds, truncated)
            except ZdsError as e:
                log.warning("enrollment: rejected message: %s", e)
                await conn.send(encode_ack(str(e)))
                return
            error = ""
            try:
                if isinstance(req, AddPod):
                    named.add(req.info.uid)
                    await handler.add_pod(req.info, req.netns_fd)
                elif isinstance(req, KeepPod):
                    if snapshot_sent:
                        raise EnrollRefused(f"keep for pod {req.uid} after the snapshot was sent")
                    named.add(req.uid)
                elif isinstance(req, DelPod):
                    named.discard(req.uid)
                    await handler.del_pod(req.uid)
                elif isinstance(req, SnapshotSent):
                    if snapshot_sent:
                        raise EnrollRefused("the snapshot was sent already on this connection")
                    snapshot_sent = True
                    await handler.snapshot_sent(frozenset(named))
            except EnrollRefused as e:
                error = str(e)
                log.warning("enrollment: %s", e)
            await conn.send(encode_ack(error))


async def serve_enrollment(
    path: str,
    handler: EnrollHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `path` (replacing a stale socket file) and serve enrollment requests."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with listener:
        await listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(128)
        log.info("enrollment socket listening on %s", path)
        task_status.started()
        async with trio.open_nursery() as nursery:
            await serve_connections(
                listener,
                lambda conn: _guarded(conn, handler),
                nursery,
                name=f"enrollment socket {path}",
            )


async def _guarded(conn: trio.socket.SocketType, handler: EnrollHandler) -> None:
    try:
        await _serve_connection(conn, handler)
    except OSError as e:
        log.info("enrollment connection ended: %s", e)
