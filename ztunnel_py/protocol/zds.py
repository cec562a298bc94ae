"""The enrollment wire format (Istio's ZDS messages over SOCK_SEQPACKET) and its validation rules.

One protobuf per datagram. An AddWorkload carries exactly one network-namespace fd as SCM_RIGHTS;
every other message carries none. This module turns datagrams into typed requests (or a clear
`ZdsError`) and back; it does no I/O, and it closes fds that arrive where none belong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ztunnel_py.proto import zds_pb2

MAX_MESSAGE = 1024


class ZdsError(Exception):
    """A malformed or out-of-place enrollment message; the text goes back in the NACK."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    name: str
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class AddPod:
    info: PodInfo
    netns_fd: int


@dataclass(frozen=True, slots=True)
class KeepPod:
    uid: str


@dataclass(frozen=True, slots=True)
class DelPod:
    uid: str


@dataclass(frozen=True, slots=True)
class SnapshotSent:
    pass


Request = AddPod | KeepPod | DelPod | SnapshotSent


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def decode_request(data: bytes, fds: list[int], truncated: bool = False) -> Request:
    """Decode one datagram; on any error every received fd is closed and ZdsError raised."""
    try:
        if truncated:
            raise ZdsError(f"message or ancillary data truncated (limit {MAX_MESSAGE} bytes)")
        msg = zds_pb2.WorkloadRequest()
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            raise ZdsError(f"not a WorkloadRequest protobuf: {e}") from None
        kind = msg.WhichOneof("payload")
        if kind is None:
            raise ZdsError("WorkloadRequest has no payload")
        if kind == "add":
            add = msg.add
            if not add.uid:
                raise ZdsError("AddWorkload without uid")
            if not add.HasField("workload_info"):
                raise ZdsError(f"AddWorkload {add.uid} without workload_info")
            wi = add.workload_info
            if not wi.name or not wi.namespace:
                raise ZdsError(f"AddWorkload {add.uid}: workload_info needs name and namespace")
            if len(fds) != 1:
                raise ZdsError(
                    f"AddWorkload {add.uid} must carry exactly one netns fd, got {len(fds)}"
                )
            info = PodInfo(add.uid, wi.name, wi.namespace, wi.service_account or "default")
            return AddPod(info, fds[0])
        if fds:
            raise ZdsError(f"{kind} must not carry file descriptors, got {len(fds)}")
        if kind == "keep":
            if not msg.keep.uid:
                raise ZdsError("KeepWorkload without uid")
            return KeepPod(msg.keep.uid)
        if kind == "del":
            # `del` is a Python keyword, so the generated field is reached with getattr.
            uid = getattr(msg, "del").uid
            if not uid:
                raise ZdsError("DelWorkload without uid")
            return DelPod(uid)
        return SnapshotSent()
    except ZdsError:
        _close_all(fds)
        raise


def encode_ack(error: str = "") -> bytes:
    return zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString()


def decode_ack(data: bytes) -> str:
    """The NACK text of a response ("" for an ACK); ZdsError if it is not a WorkloadResponse."""
    msg = zds_pb2.WorkloadResponse()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise ZdsError(f"not a WorkloadResponse protobuf: {e}") from None
    if msg.WhichOneof("payload") != "ack":
        raise ZdsError("WorkloadResponse without ack")
    return msg.ack.error


def encode_hello() -> bytes:
    return zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString()


def decode_hello(data: bytes) -> None:
    msg = zds_pb2.ZdsHello()
    try:
        msg.ParseFromString(data)
    except DecodeError as e:
        raise ZdsError(f"not a ZdsHello: {e}") from None
    if msg.version != zds_pb2.V1:
        raise ZdsError(f"unsupported ZDS version {msg.version}")


def encode_add(info: PodInfo) -> bytes:
    wi = zds_pb2.WorkloadInfo(
        name=info.name, namespace=info.namespace, service_account=info.service_account
    )
    return zds_pb2.WorkloadRequest(
        add=zds_pb2.AddWorkload(uid=info.uid, workload_info=wi)
    ).SerializeToString()


def encode_del(uid: str) -> bytes:
    req = zds_pb2.WorkloadRequest()
    getattr(req, "del").uid = uid
    return req.SerializeToString()


def encode_keep(uid: str) -> bytes:
    return zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid=uid)).SerializeToString()


def encode_snapshot_sent() -> bytes:
    return zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent()).SerializeToString()
