"""The HTTP/1.1 codecs with no sockets: our server against an h11 client, our client against an
h11 server, our client and server back to back (a property test over random messages), and our
parser against h11's (the reference it replaced) over random, often malformed, requests."""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztunnel_py.http.events import (
    BadRequest,
    ConnectionEnded,
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    Switched,
)
from ztunnel_py.http.h1 import MAX_HEADER_BYTES, MAX_HEADERS, H1Client, H1Server, HttpCodecError
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead


def h11_events(conn: h11.Connection, data: bytes = b"") -> list[h11.Event]:
    """Every event h11 can produce from what it received (stops at NEED_DATA/PAUSED)."""
    if data:
        conn.receive_data(data)
    out: list[h11.Event] = []
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            return out
        assert isinstance(ev, h11.Event)
        out.append(ev)
        if isinstance(ev, h11.ConnectionClosed):
            return out


def body_of(events: list[Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def only(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


def h11_request(method: str, target: str, headers: list[tuple[str, str]]) -> h11.Request:
    return h11.Request(method=method, target=target, headers=headers)


# Our server against an h11 client


class ServerPair:
    def __init__(self) -> None:
        self.server = H1Server()
        self.client = h11.Connection(h11.CLIENT)

    def send(self, *events: h11.Event) -> list[Event]:
        data = b"".join(self.client.send(e) or b"" for e in events)
        return self.server.receive_data(data)

    def responses(self) -> list[h11.Event]:
        return h11_events(self.client, self.server.data_to_send())


def test_server_get_keep_alive_cycles_number_exchanges_like_h2_client_streams() -> None:
    p = ServerPair()
    for sid in (1, 3, 5):
        events = p.send(
            h11_request("GET", f"/x/{sid}?q=1", [("Host", "svc:8080"), ("X-A", "1")]),
            h11.EndOfMessage(),
        )
        assert len(events) == 1
        req = events[0]
        assert isinstance(req, RequestReceived)
        assert req.stream_id == sid and req.end_stream
        assert req.head.method == "GET"
        assert req.head.path == f"/x/{sid}?q=1"
        assert req.head.authority == "svc:8080"
        assert req.head.headers.items() == [("x-a", "1")]
        assert req.head.version == "HTTP/1.1"
        p.server.send_headers(sid, ResponseHead(200, Headers([("content-length", "5")])))
        p.server.send_data(sid, b"hello")
        p.server.send_end(sid)
        got = p.responses()
        assert isinstance(got[0], h11.Response) and got[0].status_code == 200
        assert b"".join(bytes(e.data) for e in got if isinstance(e, h11.Data)) == b"hello"
        assert isinstance(got[-1], h11.EndOfMessage)
        p.client.start_next_cycle()
        assert p.server.idle


def test_server_heads_carry_their_size_on_the_wire() -> None:
    """What the request metrics count as a head's size: the bytes it took on the wire."""
    server = H1Server()
    wire = b"GET /a HTTP/1.1\r\nHost: svc\r\nX-A:  padded \r\n\r\n"
    (req,) = server.receive_data(wire)
    assert isinstance(req, RequestReceived)
    assert req.head.wire_size == len(wire)
    assert req.head.copy().wire_size == 0
    head = ResponseHead(200, Headers([("content-length", "0")]))
    server.send_headers(req.stream_id, head, end_stream=True)
    assert head.wire_size == len(server.data_to_send()) > 0


def test_server_chunked_request_body_and_trailers() -> None:
    p = ServerPair()
    events = p.send(
        h11_request("POST", "/up", [("Host", "a"), ("Transfer-Encoding", "chunked")]),
        h11.Data(data=b"part1-"),
        h11.Data(data=b"part2"),
        h11.EndOfMessage(headers=[("grpc-status", "0"), ("x-t", "v")]),
    )
    assert isinstance(events[0], RequestReceived) and not events[0].end_stream
    assert body_of(events, 1) == b"part1-part2"
    end = events[-1]
    assert isinstance(end, MessageEnded) and end.stream_id == 1
    assert end.trailers is not None
    assert end.trailers.items() == [("grpc-status", "0"), ("x-t", "v")]


def test_server_content_length_body_arrives_in_pieces() -> None:
    p = ServerPair()
    head = p.send(h11_request("PUT", "/", [("Host", "a"), ("Content-Length", "10")]))
    assert isinstance(head[0], RequestReceived) and not head[0].end_stream
    first = p.server.receive_data(b"01234")
    rest = p.server.receive_data(b"56789")
    assert body_of(first + rest, 1) == b"0123456789"
    assert isinstance(rest[-1], MessageEnded) and rest[-1].trailers is None


def test_server_response_of_unknown_length_is_chunked_with_trailers() -> None:
    p = ServerPair()
    p.send(h11_request("POST", "/", [("Host", "a"), ("Content-Length", "0")]), h11.EndOfMessage())
    p.server.send_headers(1, ResponseHead(200, Headers([("content-type", "application/grpc")])))
    p.server.send_data(1, b"abc")
    p.server.send_end(1, Headers([("grpc-status", "0")]))
    got = p.responses()
    assert isinstance(got[0], h11.Response)
    assert (b"transfer-encoding", b"chunked") in list(got[0].headers)
    assert isinstance(got[-1], h11.EndOfMessage)
    assert list(got[-1].headers) == [(b"grpc-status", b"0")]


def test_server_pipelined_requests_wait_for_the_response() -> None:
    p = ServerPair()
    wire = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    )
    events = p.server.receive_data(wire)
    assert [e.head.path for e in only(events, RequestReceived)] == ["/1"]  # type: ignore[attr-defined]
    assert p.server.next_events() == []
    for sid, path in ((1, "/2"), (3, "/3")):
        p.server.send_headers(sid, ResponseHead(204), end_stream=True)
        nxt = p.server.next_events()
        assert isinstance(nxt[0], RequestReceived)
        assert nxt[0].head.path == path and nxt[0].stream_id == sid + 2
    assert body_of(nxt, 5) == b"abc"


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_server_responses_without_a_body(method: str, status: int) -> None:
    p = ServerPair()
    p.send(h11_request(method, "/", [("Host", "a")]), h11.EndOfMessage())
    headers = Headers([("content-length", "1234")]) if method == "HEAD" else Headers()
    p.server.send_headers(1, ResponseHead(status, headers), end_stream=True)
    got = p.responses()
    assert isinstance(got[0], h11.Response) and got[0].status_code == status
    assert isinstance(got[1], h11.EndOfMessage)
    assert not any(isinstance(e, h11.Data) for e in got)
    if method == "HEAD":
        # the length of the GET it mirrors, not of this (empty) body
        assert (b"content-length", b"1234") in list(got[0].headers)
    else:
        assert not any(n == b"content-length" for n, _ in got[0].headers)
    assert p.server.idle


def test_server_head_response_ignores_trailers_it_cannot_carry() -> None:
    p = ServerPair()
    p.send(h11_request("HEAD", "/", [("Host", "a")]), h11.EndOfMessage())
    p.server.send_headers(1, ResponseHead(200, Headers([("content-type", "application/grpc")])))
    p.server.send_end(1, Headers([("grpc-status", "0")]))
    got = p.responses()
    assert isinstance(got[0], h11.Response) and isinstance(got[1], h11.EndOfMessage)
    assert p.server.idle


def test_server_end_stream_without_framing_sends_content_length_zero() -> None:
    p = ServerPair()
    p.send(h11_request("GET", "/", [("Host", "a")]), h11.EndOfMessage())
    p.server.send_headers(1, ResponseHead(404), end_stream=True)
    got = p.responses()
    assert isinstance(got[0], h11.Response)
    assert (b"content-length", b"0") in list(got[0].headers)
    assert got[0].reason == b"Not Found"


def test_server_100_continue_then_body() -> None:
    p = ServerPair()
    events = p.send(
        h11_request(
            "POST", "/", [("Host", "a"), ("Content-Length", "4"), ("Expect", "100-continue")]
        )
    )
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.headers.get("expect") == "100-continue"
    p.server.send_headers(1, ResponseHead(100))
    got = p.responses()
    assert isinstance(got[0], h11.InformationalResponse) and got[0].status_code == 100
    more = p.send(h11.Data(data=b"body"), h11.EndOfMessage())
    assert body_of(more, 1) == b"body" and isinstance(more[-1], MessageEnded)


def test_server_upgrade_switches_with_the_bytes_sent_after_the_request() -> None:
    server = H1Server()
    wire = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05early"
    )
    events = server.receive_data(wire)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived) and events[0].end_stream
    assert events[0].head.headers.get("upgrade") == "websocket"
    head = ResponseHead(101, Headers([("connection", "Upgrade"), ("upgrade", "websocket")]))
    trailing = server.send_switch(1, head)
    assert trailing == b"\x81\x05early"
    assert server.switched and not server.idle
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11_request(
            "GET", "/ws", [("Host", "a"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
        )
    )
    client.send(h11.EndOfMessage())
    got = h11_events(client, server.data_to_send() + b"raw from server")
    assert isinstance(got[0], h11.InformationalResponse) and got[0].status_code == 101
    assert client.trailing_data[0] == b"raw from server"


def test_server_connect_switches_on_2xx() -> None:
    server = H1Server()
    events = server.receive_data(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01")
    req = events[0]
    assert isinstance(req, RequestReceived)
    assert req.head.method == "CONNECT" and req.head.authority == "db:5432"
    assert not req.end_stream
    server.send_headers(1, ResponseHead(200))
    assert server.accept_switch(1) == b"\x00\x01"
    assert server.data_to_send().startswith(b"HTTP/1.1 200 ")


def test_server_absolute_form_target_gives_the_authority() -> None:
    server = H1Server()
    events = server.receive_data(b"GET http://other:81/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n")
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.authority == "other:81" and events[0].head.path == "/p?q"


def test_server_http10_request_ends_keep_alive() -> None:
    server = H1Server()
    events = server.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(events[0], RequestReceived) and events[0].head.version == "HTTP/1.0"
    server.send_headers(1, ResponseHead(200))
    server.send_data(1, b"close-delimited")
    server.send_end(1)
    out = server.data_to_send()
    assert out.endswith(b"\r\n\r\nclose-delimited")
    assert b"chunked" not in out.lower()
    assert server.must_close and not server.idle


def test_server_response_finished_before_the_request_body_ends_keep_alive() -> None:
    """The rest of that request body cannot be told apart from a next request: close."""
    server = H1Server()
    server.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    server.send_headers(1, ResponseHead(404), end_stream=True)
    assert server.must_close and not server.idle


@pytest.mark.parametrize(
    "wire",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        # a valid field at the end of a bad line, in the middle and at the end of the block
        b"GET / HTTP/1.1\r\nHost: a\r\nbad line x: y\r\nX-A: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nbad line x: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\x00x: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_server_malformed_request_is_400_and_closes(wire: bytes) -> None:
    server = H1Server()
    events = server.receive_data(wire)
    bad = events[-1]
    assert isinstance(bad, BadRequest) and bad.status == 400 and bad.reason
    assert server.must_close
    assert server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []
    # the 400 can still be sent
    server.send_headers(bad.stream_id, ResponseHead(400, Headers([("content-length", "0")])))
    server.send_end(bad.stream_id)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")


def test_server_head_over_60_kib_is_431() -> None:
    server = H1Server()
    big = b"x" * (MAX_HEADER_BYTES + 1)
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + big + b"\r\n\r\n")
    assert len(events) == 1
    assert isinstance(events[0], BadRequest) and events[0].status == 431


def test_server_head_over_60_kib_split_across_reads_is_431() -> None:
    server = H1Server()
    assert server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ") == []
    events: list[Event] = []
    for _ in range(20):
        events += server.receive_data(b"y" * 4096)
    assert [type(e) for e in events] == [BadRequest]
    assert events[0].status == 431  # type: ignore[attr-defined]


def test_server_head_just_under_the_limit_is_accepted() -> None:
    server = H1Server()
    value = b"z" * (MAX_HEADER_BYTES - 200)
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + value + b"\r\n\r\n")
    assert isinstance(events[0], RequestReceived)


@pytest.mark.parametrize(("count", "ok"), [(MAX_HEADERS, True), (MAX_HEADERS + 1, False)])
def test_server_header_count_limit(count: int, ok: bool) -> None:
    server = H1Server()
    lines = b"Host: a\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
    events = server.receive_data(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    if ok:
        assert isinstance(events[0], RequestReceived)
        assert len(events[0].head.headers) == count - 1
    else:
        assert isinstance(events[0], BadRequest) and events[0].status == 431


def test_server_peer_close_ends_the_connection() -> None:
    server = H1Server()
    assert server.receive_data(b"") == [ConnectionEnded()]
    assert server.receive_data(b"GET") == []


def test_server_send_on_a_wrong_exchange_raises() -> None:
    server = H1Server()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(HttpCodecError):
        server.send_headers(3, ResponseHead(200))
    server.send_headers(1, ResponseHead(200, Headers([("content-length", "2")])))
    with pytest.raises(HttpCodecError):
        server.send_data(1, b"too long")


# Our client against an h11 server


class ClientPair:
    def __init__(self) -> None:
        self.client = H1Client()
        self.server = h11.Connection(h11.SERVER)

    def requests(self) -> list[h11.Event]:
        return h11_events(self.server, self.client.data_to_send())

    def respond(self, *events: h11.Event, extra: bytes = b"") -> list[Event]:
        data = b"".join(self.server.send(e) or b"" for e in events)
        return self.client.receive_data(data + extra)


def test_client_get_and_keep_alive() -> None:
    p = ClientPair()
    for sid in (1, 3):
        assert p.client.idle and p.client.stream_id == sid
        head = RequestHead("GET", "/p?x=1", "svc:80", Headers([("x-a", "1")]))
        p.client.send_headers(sid, head, end_stream=True)
        got = p.requests()
        req = got[0]
        assert isinstance(req, h11.Request)
        assert req.method == b"GET" and req.target == b"/p?x=1"
        assert list(req.headers) == [(b"host", b"svc:80"), (b"x-a", b"1")]
        assert isinstance(got[1], h11.EndOfMessage)
        events = p.respond(
            h11.Response(status_code=200, headers=[("Content-Length", "2")]),
            h11.Data(data=b"ok"),
            h11.EndOfMessage(),
        )
        assert isinstance(events[0], ResponseReceived) and events[0].head.status == 200
        assert not events[0].end_stream
        assert body_of(events, sid) == b"ok"
        assert isinstance(events[-1], MessageEnded)
        p.server.start_next_cycle()
    assert p.client.idle


def test_client_body_of_unknown_length_goes_chunked_with_trailers() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("POST", "/", "a", Headers([("te", "trailers")])))
    p.client.send_data(1, b"abc")
    p.client.send_data(1, b"")
    p.client.send_data(1, memoryview(b"def"))
    p.client.send_end(1, Headers([("x-checksum", "9")]))
    got = p.requests()
    req = got[0]
    assert isinstance(req, h11.Request)
    assert (b"transfer-encoding", b"chunked") in list(req.headers)
    assert b"".join(bytes(e.data) for e in got if isinstance(e, h11.Data)) == b"abcdef"
    assert isinstance(got[-1], h11.EndOfMessage)
    assert list(got[-1].headers) == [(b"x-checksum", b"9")]


def test_client_content_length_body_drops_trailers() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("POST", "/", "a", Headers([("content-length", "3")])))
    p.client.send_data(1, b"abc")
    p.client.send_end(1, Headers([("x-t", "dropped")]))
    got = p.requests()
    assert (b"transfer-encoding", b"chunked") not in list(got[0].headers)  # type: ignore[union-attr]
    assert isinstance(got[-1], h11.EndOfMessage) and list(got[-1].headers) == []


def test_client_chunked_response_with_trailers() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("POST", "/", "a"), end_stream=True)
    p.requests()
    events = p.respond(
        h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]),
        h11.Data(data=b"x" * 10),
        h11.EndOfMessage(headers=[("grpc-status", "0")]),
    )
    assert body_of(events, 1) == b"x" * 10
    end = events[-1]
    assert isinstance(end, MessageEnded) and end.trailers is not None
    assert end.trailers.items() == [("grpc-status", "0")]


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("HEAD", 200, [("Content-Length", "99")]),
        ("GET", 204, []),
        ("GET", 304, [("Content-Length", "99")]),
        ("GET", 200, [("Content-Length", "0")]),
    ],
)
def test_client_responses_without_a_body_end_with_their_head(
    method: str, status: int, headers: list[tuple[str, str]]
) -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead(method, "/", "a"), end_stream=True)
    p.requests()
    events = p.respond(h11.Response(status_code=status, headers=headers), h11.EndOfMessage())
    assert len(events) == 1
    assert isinstance(events[0], ResponseReceived) and events[0].end_stream
    assert p.client.idle and p.client.stream_id == 3


def test_client_100_continue_is_informational() -> None:
    p = ClientPair()
    p.client.send_headers(
        1,
        RequestHead(
            "POST", "/", "a", Headers([("content-length", "2"), ("expect", "100-continue")])
        ),
    )
    p.requests()
    events = p.respond(h11.InformationalResponse(status_code=100, headers=[]))
    assert isinstance(events[0], InformationalReceived) and events[0].head.status == 100
    p.client.send_data(1, b"hi")
    p.client.send_end(1)
    assert b"".join(bytes(e.data) for e in p.requests() if isinstance(e, h11.Data)) == b"hi"
    events = p.respond(h11.Response(status_code=201, headers=[("Content-Length", "0")]))
    assert isinstance(events[0], ResponseReceived) and events[0].head.status == 201


def test_client_101_switches_with_trailing_bytes() -> None:
    p = ClientPair()
    headers = Headers([("connection", "Upgrade"), ("upgrade", "websocket")])
    p.client.send_headers(1, RequestHead("GET", "/ws", "a", headers), end_stream=True)
    p.requests()
    events = p.respond(
        h11.InformationalResponse(
            status_code=101, headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]
        ),
        extra=b"\x81\x02hi",
    )
    assert len(events) == 1
    sw = events[0]
    assert isinstance(sw, Switched) and sw.trailing == b"\x81\x02hi"
    assert sw.head is not None and sw.head.status == 101
    assert p.client.switched and not p.client.idle


def test_client_connect_2xx_switches() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("CONNECT", "db:5432", "db:5432"), end_stream=True)
    got = p.requests()
    assert isinstance(got[0], h11.Request) and got[0].method == b"CONNECT"
    events = p.respond(h11.Response(status_code=200, headers=[]), extra=b"tail")
    assert isinstance(events[0], Switched) and events[0].trailing == b"tail"


def test_client_response_before_the_request_is_sent_ends_keep_alive() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("POST", "/", "a", Headers([("content-length", "10")])))
    p.client.send_data(1, b"abc")
    p.requests()
    events = p.respond(
        h11.Response(status_code=413, headers=[("Content-Length", "0")]), h11.EndOfMessage()
    )
    assert isinstance(events[0], ResponseReceived)
    assert p.client.must_close and not p.client.idle


def test_client_close_delimited_response() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("GET", "/", "a"), end_stream=True)
    p.requests()
    events = p.client.receive_data(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    assert isinstance(events[0], ResponseReceived) and not events[0].end_stream
    end = p.client.receive_data(b"")
    assert body_of(events + end, 1) == b"all of it"
    assert [type(e) for e in end] == [MessageEnded, ConnectionEnded]


def test_client_malformed_response_ends_the_connection_with_an_error() -> None:
    p = ClientPair()
    p.client.send_headers(1, RequestHead("GET", "/", "a"), end_stream=True)
    events = p.client.receive_data(b"NOT HTTP AT ALL\r\n\r\n")
    assert len(events) == 1
    assert isinstance(events[0], ConnectionEnded) and events[0].error
    assert p.client.receive_data(b"more") == []


# Back to back: our client to our server and back, over random messages

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.text(alphabet="abcXYZ 0123456789;=/,.", max_size=20).map(str.strip)
FIELDS = st.lists(st.tuples(TOKEN.filter(lambda n: n not in _FRAMING), VALUE), max_size=8)
CHUNKS = st.lists(st.binary(min_size=1, max_size=300), max_size=5)
_FRAMING = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "keep-alive",
}


def drive(src: H1Client | H1Server, dst: H1Client | H1Server) -> list[Event]:
    return dst.receive_data(src.data_to_send())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
            st.text(alphabet="abc/-_~%0123456789", max_size=20).map(lambda p: "/" + p),
            FIELDS,
            CHUNKS,
            st.booleans(),
            FIELDS,
            st.sampled_from([200, 201, 404, 500, 503]),
            FIELDS,
            CHUNKS,
            st.booleans(),
            FIELDS,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_round_trip_through_our_client_and_server(exchanges: list[tuple]) -> None:  # type: ignore[type-arg]
    client, server = H1Client(), H1Server()
    for (
        method,
        path,
        req_fields,
        req_body,
        req_len,
        req_trailers,
        status,
        resp_fields,
        resp_body,
        resp_len,
        resp_trailers,
    ) in exchanges:
        sid = client.stream_id
        headers = Headers(req_fields)
        body = b"".join(req_body)
        if req_len and body:
            headers.add("content-length", str(len(body)))
        head = RequestHead(method, path, "svc.ns:8080", headers)
        client.send_headers(sid, head, end_stream=not req_body)
        for chunk in req_body:
            client.send_data(sid, chunk)
        sent_trailers = Headers(req_trailers) if req_trailers and not req_len else None
        if req_body:
            client.send_end(sid, Headers(req_trailers) if req_trailers else None)
        got = drive(client, server)
        req = got[0]
        assert isinstance(req, RequestReceived) and req.stream_id == sid
        assert (req.head.method, req.head.path, req.head.authority) == (method, path, "svc.ns:8080")
        framing = [("content-length", str(len(body)))] if req_len and body else []
        if req_body and not framing:
            framing = [("transfer-encoding", "chunked")]
        assert req.head.headers.items() == [*Headers(req_fields).items(), *framing]
        assert body_of(got, sid) == body
        ends = only(got, MessageEnded)
        if req_body:
            assert len(ends) == 1
            assert ends[0].trailers == (sent_trailers or None)  # type: ignore[attr-defined]
        else:
            assert req.end_stream and not ends

        rheaders = Headers(resp_fields)
        rbody = b"".join(resp_body)
        if resp_len:
            rheaders.add("content-length", str(len(rbody)))
        server.send_headers(sid, ResponseHead(status, rheaders), end_stream=not resp_body)
        for chunk in resp_body:
            server.send_data(sid, chunk)
        if resp_body:
            server.send_end(sid, Headers(resp_trailers) if resp_trailers else None)
        back = drive(server, client)
        resp = back[0]
        assert isinstance(resp, ResponseReceived) and resp.head.status == status
        assert resp.head.headers.get_all("x-none") == []
        assert body_of(back, sid) == rbody
        if resp_body:
            end = only(back, MessageEnded)[0]
            want = Headers(resp_trailers) if resp_trailers and not resp_len else None
            assert end.trailers == want  # type: ignore[attr-defined]
        assert client.idle and server.idle


def test_server_drops_body_framing_from_a_204() -> None:
    p = ServerPair()
    p.send(h11_request("GET", "/", [("Host", "a")]), h11.EndOfMessage())
    headers = Headers([("content-length", "6"), ("transfer-encoding", "chunked"), ("x-a", "1")])
    p.server.send_headers(1, ResponseHead(204, headers), end_stream=True)
    got = p.responses()
    assert isinstance(got[0], h11.Response)
    assert list(got[0].headers) == [(b"x-a", b"1")]
    assert p.server.idle


# Differential: our parser accepts and refuses what h11 (the reference it replaced) does

_METHODS = ["GET", "POST", "PUT", "get", "G T", "", "CONNECT"]
_TARGETS = ["/", "/a?b=1", "/a b", "*", "/\x7f", "/é"]
_VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "http/1.1", "HTTP/1.1 "]
_NAMES = ["Host", "host", "Content-Length", "Transfer-Encoding", "X-A", "Bad Name", "Connection"]
_NAMES += ["Upgrade", "", "x\x00", "Expect"]
_VALUES = ["a", "5", "0", "chunked", "CHUNKED", "gzip, chunked", " v ", "a\x00b", "close"]
_VALUES += ["keep-alive", "5, 5", "5, 6", "-1", "\x80\xff", "a\rb", "", "100-continue"]
_BODIES = [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nx-t: v\r\n\r\n"]
_BODIES += [b"zz\r\n", b"5\r\nhelloXX0\r\n\r\n", b"3;ext=1\r\nabc\r\n0\r\n\r\n"]


def _h11_server_view(wire: list[bytes]) -> tuple[str, list[object]]:
    """What h11 makes of a client's bytes fed in pieces: ("ok"|"error", what it read)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    seen: list[object] = []
    try:
        for piece in wire:
            conn.receive_data(piece)
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.Request):
                    fields = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ev.headers]
                    seen.append(
                        ("request", ev.method.decode(), ev.target.decode("latin-1"), fields)
                    )
                elif isinstance(ev, h11.Data):
                    seen.append(("data", bytes(ev.data)))
                elif isinstance(ev, h11.EndOfMessage):
                    trailers = [(n.decode(), v.decode("latin-1")) for n, v in ev.headers]
                    seen.append(("end", trailers))
                elif isinstance(ev, h11.ConnectionClosed):
                    seen.append(("closed",))
                    return "ok", seen
    except h11.RemoteProtocolError:
        return "error", seen
    return "ok", seen


def _our_server_view(wire: list[bytes]) -> tuple[str, list[object]]:
    server = H1Server()
    seen: list[object] = []
    for piece in wire:
        for ev in server.receive_data(piece):
            if isinstance(ev, RequestReceived):
                head = ev.head
                seen.append(
                    ("request", head.method, head.path, head.authority, head.headers.items())
                )
                if ev.end_stream:
                    seen.append(("end", []))
            elif isinstance(ev, DataReceived):
                seen.append(("data", ev.data))
            elif isinstance(ev, MessageEnded):
                seen.append(("end", ev.trailers.items() if ev.trailers else []))
            elif isinstance(ev, ConnectionEnded):
                seen.append(("closed",))
            elif isinstance(ev, BadRequest):
                return "error", seen
    return "ok", seen


def _merged(seen: list[object]) -> list[object]:
    """Adjacent body pieces as one (the codecs may cut a body differently)."""
    out: list[object] = []
    for item in seen:
        last = out[-1] if out else None
        if isinstance(item, tuple) and isinstance(last, tuple) and item[0] == last[0] == "data":
            out[-1] = ("data", last[1] + item[1])
        else:
            out.append(item)
    return out


def _comparable(h11_seen: list[object]) -> list[object]:
    """h11's events in our terms: Host becomes the authority (CONNECT's is its target)."""
    out: list[object] = []
    for item in h11_seen:
        if isinstance(item, tuple) and item[0] == "request":
            _, method, target, fields = item
            hosts = [v for n, v in fields if n == "host"]
            rest = [(n, v) for n, v in fields if n != "host"]
            authority = target if method == "CONNECT" else (hosts[0] if hosts else "")
            out.append(("request", method, target, authority, rest))
        else:
            out.append(item)
    return _merged(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["", "\r\n", "\n", " "]),
    st.sampled_from(_METHODS),
    st.sampled_from(_TARGETS),
    st.sampled_from(_VERSIONS),
    st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=5),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
    st.sampled_from(_BODIES),
    st.lists(st.integers(min_value=1, max_value=80), max_size=3),
    st.booleans(),
)
def test_our_server_parses_requests_as_h11_does(
    lead: str,
    method: str,
    target: str,
    version: str,
    fields: list[tuple[str, str]],
    eol: str,
    fold: bool,
    body: bytes,
    cuts: list[int],
    eof: bool,
) -> None:
    lines = [f"{method} {target} {version}"] + [f"{n}: {v}" for n, v in fields]
    if fold and len(lines) > 1:
        lines.insert(2, " folded")
    wire = (lead + eol.join(lines) + eol + eol).encode("latin-1") + body
    pieces: list[bytes] = []
    at = 0
    for cut in sorted(cuts):
        if at < cut < len(wire):
            pieces.append(wire[at:cut])
            at = cut
    pieces.append(wire[at:])
    if eof:
        pieces.append(b"")
    ref_state, ref_seen = _h11_server_view(pieces)
    our_state, our_seen = _our_server_view(pieces)
    assert our_state == ref_state, (wire, ref_seen, our_seen)
    if ref_state == "ok":
        assert _merged(our_seen) == _comparable(ref_seen), wire


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-a", "v\r\nx-injected: 1"),  # a value smuggling a field line
        ("x-a", "v\nx-injected: 1"),
        ("x-a: v\r\nx-injected", "1"),  # a name smuggling one
        ("x-a: v", "1"),  # a name that would read as a field with a value
        ("x a", "1"),
        ("", "1"),
        ("x-a", " leading space"),
        ("x-a", "nul\x00"),
    ],
)
def test_client_refuses_fields_that_would_break_the_head(name: str, value: str) -> None:
    client = H1Client()
    head = RequestHead("GET", "/", "a", Headers.trusted([("accept", "*/*"), (name, value)]))
    with pytest.raises(HttpCodecError):
        client.send_headers(client.stream_id, head, end_stream=True)
    assert client.data_to_send() == b""
