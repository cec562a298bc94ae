"""The enrolling side of the ZDS socket: used by `ztunnel-py cni` and the testbed.

Blocking and short-lived on purpose: a CNI plugin is a one-shot process.
"""

from __future__ import annotations

import array
import os
import socket

from ztunnel_py.protocol.zds import (
    MAX_MESSAGE,
    PodInfo,
    ZdsError,
    decode_ack,
    decode_hello,
    encode_add,
    encode_del,
)


class EnrollError(Exception):
    """The agent refused (NACKed) a request or could not be reached."""


def _connect(socket_path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
        decode_hello(sock.recv(MAX_MESSAGE))
    except (OSError, ZdsError) as e:
        sock.close()
        raise EnrollError(
            f"cannot reach the agent's enrollment socket {socket_path}: {e}; "
            "is `ztunnel-py agent` running on this node?"
        ) from e
    return sock


def _exchange(sock: socket.socket, payload: bytes, fds: list[int]) -> None:
    ancillary = []
    if fds:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
    try:
        sock.sendmsg([payload], ancillary)
        error = decode_ack(sock.recv(MAX_MESSAGE))
    except (OSError, ZdsError) as e:
        raise EnrollError(f"enrollment exchange failed: {e}") from e
    if error:
        raise EnrollError(error)


def enroll_pod(
    socket_path: str,
    uid: str,
    name: str,
    namespace: str,
    service_account: str,
    netns_path: str,
    timeout: float = 30.0,
) -> None:
    """Enroll one pod: hand the agent its identity and its network namespace."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _connect(socket_path, timeout) as sock:
            _exchange(sock, encode_add(PodInfo(uid, name, namespace, service_account)), [fd])
    finally:
        os.close(fd)


def unenroll_pod(socket_path: str, uid: str, timeout: float = 30.0) -> None:
    with _connect(socket_path, timeout) as sock:
        _exchange(sock, encode_del(uid), [])
