"""The sans-IO SOCKS5 server: greeting, CONNECT requests, replies, errors, partial reads."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.protocol.socks5 import ReplyCode, Socks5Error, Socks5Request, Socks5Server

GREETING = b"\x05\x01\x00"


def request(atyp: int, address: bytes, port: int, command: int = 1) -> bytes:
    return bytes([5, command, 0, atyp]) + address + struct.pack(">H", port)


def negotiated() -> Socks5Server:
    server = Socks5Server()
    assert server.receive_data(GREETING) is None
    assert server.data_to_send() == b"\x05\x00"
    return server


def test_ipv4_connect() -> None:
    server = negotiated()
    got = server.receive_data(request(1, bytes([10, 0, 0, 7]), 8080))
    assert got == Socks5Request(ipaddress.IPv4Address("10.0.0.7"), 8080)
    server.reply_success(ipaddress.IPv4Address("10.0.0.1"), 40000)
    assert server.data_to_send() == b"\x05\x00\x00\x01" + bytes([10, 0, 0, 1]) + b"\x9c\x40"


def test_ipv6_connect_and_ipv6_bound_address() -> None:
    server = negotiated()
    target = ipaddress.IPv6Address("fd00::42")
    assert server.receive_data(request(4, target.packed, 443)) == Socks5Request(target, 443)
    bound = ipaddress.IPv6Address("fd00::1")
    server.reply_success(bound, 1)
    assert server.data_to_send() == b"\x05\x00\x00\x04" + bound.packed + b"\x00\x01"


def test_domain_connect() -> None:
    server = negotiated()
    name = b"reviews.default.svc.cluster.local"
    got = server.receive_data(request(3, bytes([len(name)]) + name, 9080))
    assert got == Socks5Request("reviews.default.svc.cluster.local", 9080)


def test_domain_that_is_a_literal_ip() -> None:
    server = negotiated()
    got = server.receive_data(request(3, b"\x071.2.3.4", 80))
    assert got == Socks5Request(ipaddress.IPv4Address("1.2.3.4"), 80)


def test_greeting_with_several_methods() -> None:
    server = Socks5Server()
    assert server.receive_data(b"\x05\x03\x02\x01\x00") is None
    assert server.data_to_send() == b"\x05\x00"


def test_byte_at_a_time_and_pipelined_payload() -> None:
    server = Socks5Server()
    wire = GREETING + request(1, bytes([127, 0, 0, 1]), 80) + b"GET / HTTP/1.1\r\n\r\n"
    results = [server.receive_data(wire[i : i + 1]) for i in range(len(GREETING) + 10)]
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == Socks5Request(ipaddress.IPv4Address("127.0.0.1"), 80)
    assert server.data_to_send() == b"\x05\x00"
    # Everything after the request at the moment it completed is handed back.
    assert server.remaining == b""
    server2 = Socks5Server()
    assert server2.receive_data(wire) == Socks5Request(ipaddress.IPv4Address("127.0.0.1"), 80)
    assert server2.remaining == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("code", "wire"),
    [
        (ReplyCode.CONNECTION_REFUSED, b"\x05\x05\x00\x01" + bytes(6)),
        (ReplyCode.GENERAL_FAILURE, b"\x05\x01\x00\x01" + bytes(6)),
        (ReplyCode.HOST_UNREACHABLE, b"\x05\x04\x00\x01" + bytes(6)),
        (ReplyCode.NOT_ALLOWED, b"\x05\x02\x00\x01" + bytes(6)),
    ],
)
def test_failure_replies(code: ReplyCode, wire: bytes) -> None:
    server = negotiated()
    server.receive_data(request(1, bytes(4), 80))
    server.reply_failure(code)
    assert server.data_to_send() == wire


def test_reply_failure_refuses_success_code() -> None:
    server = negotiated()
    server.receive_data(request(1, bytes(4), 80))
    with pytest.raises(ValueError):
        server.reply_failure(ReplyCode.SUCCEEDED)


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE")])
def test_unsupported_commands(command: int, name: str) -> None:
    server = negotiated()
    with pytest.raises(Socks5Error, match="not supported") as err:
        server.receive_data(request(1, bytes(4), 80, command=command))
    assert err.value.reply is ReplyCode.COMMAND_NOT_SUPPORTED
    assert server.data_to_send() == b"\x05\x07\x00\x01" + bytes(6)


def test_unsupported_address_type() -> None:
    server = negotiated()
    with pytest.raises(Socks5Error, match="address type") as err:
        server.receive_data(b"\x05\x01\x00\x02abcd")
    assert err.value.reply is ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED
    assert server.data_to_send() == b"\x05\x08\x00\x01" + bytes(6)


def test_no_acceptable_auth_method() -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error, match="no authentication") as err:
        server.receive_data(b"\x05\x01\x02")
    assert err.value.reply is None
    assert server.data_to_send() == b"\x05\xff"


@pytest.mark.parametrize("wire", [b"\x04\x01\x00\x50", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01"])
def test_not_socks5(wire: bytes) -> None:
    server = Socks5Server()
    with pytest.raises(Socks5Error, match="not a SOCKS5 client"):
        server.receive_data(wire)
    assert server.data_to_send() == b""


def test_bad_request_version() -> None:
    server = negotiated()
    with pytest.raises(Socks5Error, match="version") as err:
        server.receive_data(b"\x04\x01")
    assert err.value.reply is ReplyCode.GENERAL_FAILURE
    assert server.data_to_send() == b"\x05\x01\x00\x01" + bytes(6)


@pytest.mark.parametrize(
    ("address", "match"),
    [(b"\x00", "empty domain"), (b"\x02\xc3\xa9", "not ASCII"), (b"\x03a b", "invalid domain")],
)
def test_bad_domain_names(address: bytes, match: str) -> None:
    server = negotiated()
    with pytest.raises(Socks5Error, match=match) as err:
        server.receive_data(request(3, address, 80))
    assert err.value.reply is ReplyCode.GENERAL_FAILURE


def test_port_zero() -> None:
    server = negotiated()
    with pytest.raises(Socks5Error, match="port 0"):
        server.receive_data(request(1, bytes([1, 2, 3, 4]), 0))


def test_no_input_after_request_or_failure() -> None:
    server = negotiated()
    server.receive_data(request(1, bytes(4), 80))
    with pytest.raises(RuntimeError):
        server.receive_data(b"more")
    failed = Socks5Server()
    with pytest.raises(Socks5Error):
        failed.receive_data(b"\x04")
    with pytest.raises(RuntimeError):
        failed.receive_data(GREETING)


def test_reply_needs_a_request() -> None:
    server = negotiated()
    with pytest.raises(RuntimeError):
        server.reply_success(ipaddress.IPv4Address("1.1.1.1"), 1)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


_wires = (
    st.binary(max_size=40)
    | st.binary(max_size=40).map(lambda tail: GREETING + tail)
    | st.builds(
        lambda head, tail: GREETING + bytes([5, 1, 0]) + head + tail,
        st.sampled_from([b"\x01", b"\x03", b"\x04", b"\x03\x00", b"\x03\x05"]),
        st.binary(max_size=30),
    )
    | st.builds(
        lambda target, port, tail: GREETING + request(*target, port) + tail,
        st.sampled_from([(1, bytes(4)), (4, bytes(16)), (3, b"\x04mesh"), (3, b"\x071.2.3.4")]),
        st.integers(0, 65535),
        st.binary(max_size=8),
    )
)


@settings(max_examples=500, deadline=None)
@given(_wires, st.lists(st.integers(0, 64), max_size=6))
def test_any_bytes_in_any_pieces_give_a_request_a_wait_or_a_clean_refusal(
    wire: bytes, cuts: list[int]
) -> None:
    """The module's contract for every input: a request (after the no-auth answer), a wait for
    more bytes, or Socks5Error with the reply it queued (the failure reply for `reply`, else
    nothing or the "no acceptable method" answer); nothing else, and no input after the end."""
    server = Socks5Server()
    fed = b""
    outcome: Socks5Request | Socks5Error | None = None
    for piece in _pieces(wire, cuts):
        fed += piece
        try:
            outcome = server.receive_data(piece)
        except Socks5Error as e:
            outcome = e
        if outcome is not None:
            break
    out = server.data_to_send()
    if outcome is None:
        assert out in (b"", b"\x05\x00")
        return
    with pytest.raises(RuntimeError):
        server.receive_data(b"\x05")
    if isinstance(outcome, Socks5Request):
        assert out == b"\x05\x00"
        assert 0 < outcome.port < 65536
        host = outcome.host
        assert not isinstance(host, str) or (
            host.isascii() and host.isprintable() and " " not in host
        )
        assert fed.endswith(server.remaining)
    elif outcome.reply is None:
        assert out in (b"", b"\x05\xff")
    else:
        assert outcome.reply is not ReplyCode.SUCCEEDED and outcome.reason
        assert out == b"\x05\x00" + bytes([5, outcome.reply, 0, 1]) + bytes(6)
