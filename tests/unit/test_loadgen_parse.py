"""The load generator's sans-IO parts: response heads and argument bounds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ztunnel_py.bench.loadgen import (
    MAX_HEAD,
    ResponseError,
    ResponseHead,
    check_connection_arguments,
    check_latency_arguments,
    parse_response_head,
)

OK_1K = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n"


def test_a_complete_head_gives_status_lengths_and_keep_alive() -> None:
    head = parse_response_head(OK_1K + b"\0" * 1024)
    assert head == ResponseHead(200, len(OK_1K), 1024, True)
    assert head.total_length == len(OK_1K) + 1024


def test_an_incomplete_head_asks_for_more_bytes_at_every_cut() -> None:
    for cut in range(len(OK_1K)):
        assert parse_response_head(OK_1K[:cut]) is None
    buf = bytearray(OK_1K) + bytearray(100)
    assert parse_response_head(buf, len(OK_1K) - 1) is None
    assert parse_response_head(buf, len(OK_1K)) == ResponseHead(200, len(OK_1K), 1024, True)


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\ncontent-length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
def test_connection_reuse_follows_version_and_connection_header(
    head: bytes, keep_alive: bool
) -> None:
    for data in (head, bytearray(head)):
        parsed = parse_response_head(data)
        assert parsed is not None
        assert parsed.keep_alive is keep_alive


def test_error_statuses_parse_and_bodiless_ones_need_no_length() -> None:
    parsed = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
    assert parsed == ResponseHead(404, 45, 9, True)
    parsed = parse_response_head(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parsed == ResponseHead(204, 27, 0, True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "malformed status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "interim response 100"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n", "malformed Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "Content-Length over"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding responses are not supported",
        ),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", "without Content-Length"),
    ],
)
def test_malformed_or_unsupported_heads_are_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        parse_response_head(data)


def test_a_head_without_end_is_refused_once_it_reaches_the_limit() -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * MAX_HEAD
    assert parse_response_head(endless[: MAX_HEAD - 1]) is None
    with pytest.raises(ResponseError, match="no end of the response head"):
        parse_response_head(endless)


def test_arguments_out_of_bounds_are_named() -> None:
    check_latency_arguments("/bytes/1024", 1000, 16, 30, 2, 5)
    check_connection_arguments("/", 5, 4, 20_000, 5)
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: check_latency_arguments("bytes", 1000, 16, 30, 2, 5), "path"),
        (lambda: check_latency_arguments("/a b", 1000, 16, 30, 2, 5), "path"),
        (lambda: check_latency_arguments("/", 0, 16, 30, 2, 5), "rate"),
        (lambda: check_latency_arguments("/", 1000, 0, 30, 2, 5), "connections"),
        (lambda: check_latency_arguments("/", 1000, 16, 0, 2, 5), "duration"),
        (lambda: check_latency_arguments("/", 1000, 16, float("nan"), 2, 5), "duration"),
        (lambda: check_latency_arguments("/", 1000, 16, 30, -1, 5), "warmup"),
        (lambda: check_latency_arguments("/", 1000, 16, 30, 2, 0), "timeout"),
        (lambda: check_latency_arguments("/", 100_000, 16, 3600, 0, 5), "shorten the run"),
        (lambda: check_latency_arguments("/", 1, 16, 0.1, 0, 5), "less than one counted request"),
        (lambda: check_connection_arguments("/", 5, 0, 20_000, 5), "concurrency"),
        (lambda: check_connection_arguments("/", 5, 4, 0, 5), "max"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()
