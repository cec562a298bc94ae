"""Enrollment over a real SOCK_SEQPACKET socket with real fds, against the real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.integration.zds_support import connect, lone_snapshot, send
from ztunnel_py.agent.enroll import EnrollRefused, serve_enrollment
from ztunnel_py.cni.enroll import EnrollError, enroll_pod, unenroll_pod
from ztunnel_py.protocol.zds import (
    MAX_MESSAGE,
    PodInfo,
    encode_add,
    encode_del,
    encode_keep,
    encode_snapshot_sent,
)


class Recorder:
    def __init__(self) -> None:
        self.pods: dict[str, PodInfo] = {}
        self.fd_inodes: dict[str, int] = {}
        self.snapshots: list[frozenset[str]] = []

    async def add_pod(self, info: PodInfo, netns_fd: int) -> None:
        self.fd_inodes[info.uid] = os.fstat(netns_fd).st_ino
        os.close(netns_fd)
        if info.name == "refuse-me":
            raise EnrollRefused(f"cannot start proxy for {info.uid}: port in use")
        self.pods[info.uid] = info

    async def del_pod(self, uid: str) -> None:
        if uid not in self.pods:
            raise EnrollRefused(f"unknown pod {uid}")
        del self.pods[uid]

    async def snapshot_sent(self, named: frozenset[str]) -> None:
        self.snapshots.append(named)


NETNS = "/proc/self/ns/net"


def _raw_exchange(path: str, payload: bytes, fds: list[int]) -> str:
    with connect(path) as s:
        answer = send(s, payload, fds)
        # A rejected message closes the connection.
        if answer:
            assert s.recv(MAX_MESSAGE) == b""
        return answer


async def test_add_del_and_bad_messages(tmp_path: Path) -> None:
    path = str(tmp_path / "ztunnel.sock")
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_enrollment, path, rec)

        def client_work() -> None:
            enroll_pod(path, "uid-a", "a", "apps", "sa-a", NETNS)
            assert rec.pods["uid-a"].service_account == "sa-a"
            assert rec.fd_inodes["uid-a"] == os.stat(NETNS).st_ino
            with pytest.raises(EnrollError, match="port in use"):
                enroll_pod(path, "uid-r", "refuse-me", "apps", "sa", NETNS)
            with pytest.raises(EnrollError, match="unknown pod uid-x"):
                unenroll_pod(path, "uid-x")
            assert "not a WorkloadRequest" in _raw_exchange(path, b"\xff\xff\xff garbage", [])
            info = PodInfo("uid-b", "b", "apps", "sa")
            assert "exactly one netns fd, got 0" in _raw_exchange(path, encode_add(info), [])
            fd1 = os.open(NETNS, os.O_RDONLY)
            fd2 = os.open(NETNS, os.O_RDONLY)
            try:
                answer = _raw_exchange(path, encode_add(info), [fd1, fd2])
            finally:
                os.close(fd1)
                os.close(fd2)
            assert "exactly one netns fd, got 2" in answer
            # After all that, the server still serves.
            unenroll_pod(path, "uid-a")
            assert rec.pods == {}

        await trio.to_thread.run_sync(client_work)
        nursery.cancel_scope.cancel()


async def test_unreachable_agent_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EnrollError, match="is `ztunnel-py agent` running"):
        await trio.to_thread.run_sync(
            enroll_pod, str(tmp_path / "none.sock"), "u", "n", "ns", "sa", NETNS
        )


async def test_a_snapshot_is_what_its_own_connection_named(tmp_path: Path) -> None:
    path = str(tmp_path / "ztunnel.sock")
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_enrollment, path, rec)

        def client_work() -> None:
            with connect(path) as s:
                fd = os.open(NETNS, os.O_RDONLY)
                try:
                    assert send(s, encode_add(PodInfo("uid-a", "a", "apps", "sa")), [fd]) == ""
                finally:
                    os.close(fd)
                assert send(s, encode_keep("uid-b")) == ""
                assert send(s, encode_keep("uid-c")) == ""
                assert send(s, encode_del("uid-c")) == "unknown pod uid-c"
                assert send(s, encode_snapshot_sent()) == ""
                assert (
                    send(s, encode_keep("uid-d"))
                    == "keep for pod uid-d after the snapshot was sent"
                )
                assert (
                    send(s, encode_snapshot_sent())
                    == "the snapshot was sent already on this connection"
                )
            # A lone SnapshotSent on a new connection names no pod: the handler decides.
            assert lone_snapshot(path) == ""

        await trio.to_thread.run_sync(client_work)
        nursery.cancel_scope.cancel()
    assert rec.snapshots == [frozenset({"uid-a", "uid-b"}), frozenset()]
