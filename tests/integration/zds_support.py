"""Speaking ZDS by hand on an agent's enrollment socket, for what `cni/enroll.py` never sends
(keeps, snapshots, malformed requests)."""

from __future__ import annotations

import array
import socket
from collections.abc import Sequence

from ztunnel_py.protocol.zds import MAX_MESSAGE, decode_ack, decode_hello, encode_snapshot_sent


def connect(path: str) -> socket.socket:
    """A connection to the enrollment socket at `path`, past the agent's hello."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    decode_hello(s.recv(MAX_MESSAGE))
    return s


def send(s: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> str:
    """Send one request (with `fds` as SCM_RIGHTS); the ack's error ('' for an ACK)."""
    anc = []
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    s.sendmsg([payload], anc)
    return decode_ack(s.recv(MAX_MESSAGE))


def lone_snapshot(path: str) -> str:
    """A SnapshotSent with no pod before it, on a new connection; the ack's error."""
    with connect(path) as s:
        return send(s, encode_snapshot_sent())
