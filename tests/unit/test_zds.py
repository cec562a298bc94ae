"""The enrollment wire format without sockets: round trips, and any datagram with any fds gives a
request or a ZdsError with every received fd closed (real fds, so a leak would show)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.protocol.zds import (
    AddPod,
    DelPod,
    KeepPod,
    PodInfo,
    SnapshotSent,
    ZdsError,
    decode_ack,
    decode_hello,
    decode_request,
    encode_ack,
    encode_add,
    encode_del,
    encode_hello,
    encode_keep,
    encode_snapshot_sent,
)

INFO = PodInfo("Kubernetes//Pod/apps/web-1", "web-1", "apps", "web")


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def fresh_fds(count: int) -> list[int]:
    return [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]


@pytest.fixture
def fd() -> Iterator[int]:
    [opened] = fresh_fds(1)
    yield opened
    if is_open(opened):
        os.close(opened)


def test_requests_round_trip(fd: int) -> None:
    assert decode_request(encode_add(INFO), [fd]) == AddPod(INFO, fd)
    assert is_open(fd)  # the caller now owns it
    assert decode_request(encode_del(INFO.uid), []) == DelPod(INFO.uid)
    assert decode_request(encode_keep(INFO.uid), []) == KeepPod(INFO.uid)
    assert decode_request(encode_snapshot_sent(), []) == SnapshotSent()
    assert decode_request(encode_add(PodInfo("u", "n", "ns", "")), [fd]).info.service_account == (
        "default"
    )
    decode_hello(encode_hello())
    assert decode_ack(encode_ack()) == "" and decode_ack(encode_ack("no")) == "no"


@pytest.mark.parametrize(
    ("data", "fds", "truncated", "message"),
    [
        (encode_add(INFO), 0, False, "must carry exactly one netns fd, got 0"),
        (encode_add(INFO), 2, False, "must carry exactly one netns fd, got 2"),
        (encode_del(INFO.uid), 1, False, "del must not carry file descriptors, got 1"),
        (encode_add(INFO), 1, True, "truncated"),
        (encode_add(PodInfo("", "n", "ns", "sa")), 1, False, "AddWorkload without uid"),
        (encode_add(PodInfo("u", "", "ns", "sa")), 1, False, "needs name and namespace"),
        (b"", 0, False, "WorkloadRequest has no payload"),
        (b"\xff\xff\xff", 1, False, "not a WorkloadRequest protobuf"),
    ],
)
def test_bad_requests_are_refused_and_their_fds_closed(
    data: bytes, fds: int, truncated: bool, message: str
) -> None:
    received = fresh_fds(fds)
    with pytest.raises(ZdsError, match=message):
        decode_request(data, received, truncated)
    assert not any(is_open(fd) for fd in received)


_messages = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda uid, name, ns, sa: encode_add(PodInfo(uid, name, ns, sa)),
        *[st.text(max_size=6)] * 4,
    ),
    st.text(max_size=6).map(encode_del),
    st.text(max_size=6).map(encode_keep),
    st.just(encode_snapshot_sent()),
)


@settings(max_examples=300, deadline=None)
@given(
    _messages,
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
    st.integers(0, 3),
    st.booleans(),
)
def test_any_datagram_gives_a_request_or_a_refusal_with_every_fd_closed(
    message: bytes, flips: list[tuple[int, int]], fd_count: int, truncated: bool
) -> None:
    data = bytearray(message)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    received = fresh_fds(fd_count)
    try:
        request = decode_request(bytes(data), received, truncated)
    except ZdsError as e:
        assert str(e)  # the NACK's text
        assert not any(is_open(fd) for fd in received)
        return
    try:
        assert not truncated
        if isinstance(request, AddPod):
            assert received == [request.netns_fd] and is_open(request.netns_fd)
            assert request.info.uid and request.info.name and request.info.namespace
            assert request.info.service_account
        else:
            assert received == []
            assert not isinstance(request, KeepPod | DelPod) or request.uid
    finally:
        for fd in received:
            os.close(fd)
