"""The HTTP/2 codecs with no sockets: our server against an h2 client, our client against an h2
server, and our client and server back to back (flow control, resets, GOAWAY, limits)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import GoAwayFrame, RstStreamFrame, SettingsFrame

from tests.unit.test_hbone_core import frames
from ztunnel_py.http.events import (
    BadRequest,
    ConnectionEnded,
    DataReceived,
    Event,
    InformationalReceived,
    MessageEnded,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    WindowOpened,
)
from ztunnel_py.http.h1 import MAX_HEADER_BYTES, MAX_HEADERS, HttpCodecError
from ztunnel_py.http.h2 import (
    CONNECTION_WINDOW,
    MAX_CONCURRENT_STREAMS,
    PREFACE,
    STREAM_WINDOW,
    H2Client,
    H2Server,
)
from ztunnel_py.http.message import Headers, RequestHead, ResponseHead

MiB = 1024 * 1024
REQ = [(":method", "GET"), (":scheme", "http"), (":authority", "svc:80"), (":path", "/a?b=1")]


def send_body(conn: h2.connection.H2Connection, sid: int, data: bytes, end: bool = False) -> None:
    """h2 sends no frame larger than the peer's maximum: cut the body to fit."""
    size = conn.max_outbound_frame_size
    for i in range(0, len(data), size):
        conn.send_data(sid, data[i : i + size], end_stream=end and i + size >= len(data))


def body_of(events: list[Event], sid: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == sid)


def of(events: list[Event], kind: type) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


class Pair:
    """Our codec and an h2 peer; `pump` moves bytes both ways until both are quiet."""

    def __init__(self, ours: H2Server | H2Client, peer: h2.connection.H2Connection) -> None:
        self.ours = ours
        self.peer = peer
        self.events: list[Event] = []
        self.peer_events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            to_ours = self.peer.data_to_send()
            if to_ours:
                self.events += self.ours.receive_data(to_ours)
            to_peer = self.ours.data_to_send()
            if to_peer:
                self.peer_events += self.peer.receive_data(to_peer)
            if not to_ours and not to_peer:
                return
        raise AssertionError("never went quiet")

    def take(self) -> list[Event]:
        out = [e for e in self.events if not isinstance(e, WindowOpened)]
        self.events.clear()
        return out

    def take_peer(self) -> list[h2.events.Event]:
        out = self.peer_events
        self.peer_events = []
        return out


def h2_peer(
    *, client_side: bool, settings: dict[int, int] | None = None
) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=client_side, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    if settings:
        conn.update_settings(settings)
    return conn


class ServerPair(Pair):
    """Our server and an h2 client."""

    def __init__(self, *, client_window: int | None = None) -> None:
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window}
        self.server = H2Server()
        self.client = h2_peer(client_side=True, settings=settings if client_window else None)
        super().__init__(self.server, self.client)

    def take_client(self) -> list[h2.events.Event]:
        return self.take_peer()


def test_server_advertises_proxy_settings_and_connection_window() -> None:
    server = H2Server()
    parsed = frames(server.data_to_send())
    settings = parsed[0]
    assert isinstance(settings, SettingsFrame)
    assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == MAX_CONCURRENT_STREAMS
    assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == STREAM_WINDOW
    assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 2 * MAX_HEADER_BYTES
    assert settings.settings[SettingsFrame.ENABLE_PUSH] == 0
    increments = [f.window_increment for f in parsed if f.type == 0x8]
    assert increments == [CONNECTION_WINDOW - 65535]


def test_server_request_head_body_trailers_and_response() -> None:
    p = ServerPair()
    p.client.send_headers(1, [*REQ, ("host", "svc:80"), ("x-a", "1"), ("te", "trailers")])
    p.client.send_data(1, b"hello ")
    p.client.send_data(1, b"world")
    p.client.send_headers(1, [("grpc-timeout", "1S")], end_stream=True)
    p.pump()
    events = p.take()
    req = events[0]
    assert isinstance(req, RequestReceived) and not req.end_stream
    assert (req.head.method, req.head.scheme, req.head.authority, req.head.path) == (
        "GET",
        "http",
        "svc:80",
        "/a?b=1",
    )
    assert req.head.version == "HTTP/2"
    assert req.head.headers.items() == [("x-a", "1"), ("te", "trailers")]
    assert body_of(events, 1) == b"hello world"
    data = of(events, DataReceived)
    assert all(d.flow_controlled == len(d.data) for d in data)  # type: ignore[attr-defined]
    assert events[-1] == MessageEnded(1, Headers([("grpc-timeout", "1S")]))

    # hop-by-hop fields from an HTTP/1.1 upstream must not reach an HTTP/2 client (h2 would
    # refuse to send them)
    resp = Headers(
        [
            ("content-type", "text/plain"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
        ]
    )
    p.server.send_headers(1, ResponseHead(200, resp))
    assert p.server.send_data(1, b"body") == 4
    p.server.send_end(1, Headers([("grpc-status", "0")]))
    p.pump()
    got = p.take_client()
    rr = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert rr.headers == [(":status", "200"), ("content-type", "text/plain")]
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"body"
    tr = next(e for e in got if isinstance(e, h2.events.TrailersReceived))
    assert tr.headers == [("grpc-status", "0")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)
    assert p.server.open_stream_count == 0


def test_server_headers_only_request_reports_no_separate_end() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ, end_stream=True)
    p.client.send_headers(3, REQ, end_stream=True)
    p.pump()
    events = p.take()
    assert [(type(e), e.stream_id) for e in events] == [  # type: ignore[attr-defined]
        (RequestReceived, 1),
        (RequestReceived, 3),
    ]
    assert all(e.end_stream for e in events)  # type: ignore[attr-defined]


def test_server_response_larger_than_the_client_window_waits_for_window_updates() -> None:
    p = ServerPair(client_window=1000)
    p.client.send_headers(1, REQ, end_stream=True)
    p.pump()
    p.take()
    p.server.send_headers(1, ResponseHead(200))
    body = bytes(range(256)) * 40  # 10240 bytes
    sent = p.server.send_data(1, body, end_stream=True)
    assert sent == 1000
    assert p.server.send_window(1) == 0
    p.pump()
    received = bytearray()
    total = sent
    for _ in range(50):
        for e in p.take_client():
            if isinstance(e, h2.events.DataReceived):
                received += e.data
                p.client.acknowledge_received_data(e.flow_controlled_length, 1)
        p.pump()
        if any(isinstance(e, WindowOpened) for e in p.events):
            p.events.clear()
            total += p.server.send_data(1, body[total:], end_stream=True)
            p.pump()
        if total == len(body):
            break
    for e in p.take_client():
        if isinstance(e, h2.events.DataReceived):
            received += e.data
    assert bytes(received) == body


def test_server_request_body_beyond_the_stream_window_needs_acknowledgement() -> None:
    p = ServerPair()
    p.client.send_headers(1, [*REQ[:0], (":method", "POST"), *REQ[1:]])
    body = b"x" * (STREAM_WINDOW + 100_000)
    window = p.client.local_flow_control_window(1)
    assert window == STREAM_WINDOW
    send_body(p.client, 1, body[:window])
    p.pump()
    assert p.client.local_flow_control_window(1) == 0
    events = p.take()
    got = body_of(events, 1)
    assert got == body[:window]
    # nothing acknowledged: the client stays blocked; acknowledging opens the window again
    p.pump()
    assert p.client.local_flow_control_window(1) == 0
    for e in of(events, DataReceived):
        p.server.acknowledge(1, e.flow_controlled)  # type: ignore[attr-defined]
    p.pump()
    assert p.client.local_flow_control_window(1) >= 100_000
    send_body(p.client, 1, body[window:], end=True)
    p.pump()
    rest = p.take()
    assert body_of(rest, 1) == body[window:]
    assert isinstance(rest[-1], MessageEnded)


def test_acknowledging_a_closed_stream_still_returns_the_connection_window() -> None:
    p = ServerPair()
    # more than half the connection window, so acknowledging it is due a WINDOW_UPDATE
    sids = list(range(1, 19, 2))
    for sid in sids:
        p.client.send_headers(sid, [(":method", "POST"), *REQ[1:]])
        send_body(p.client, sid, b"y" * STREAM_WINDOW)
    p.pump()
    events = p.take()
    assert len(body_of(events, 17)) == STREAM_WINDOW
    before = p.client.outbound_flow_control_window
    assert before == CONNECTION_WINDOW - len(sids) * STREAM_WINDOW
    for sid in sids:
        p.server.reset(sid)
    p.pump()
    for e in of(events, DataReceived):
        p.server.acknowledge(e.stream_id, e.flow_controlled)  # type: ignore[attr-defined]
    p.pump()
    # h2 hands the window back in increments of at least half of it
    assert p.client.outbound_flow_control_window >= before + CONNECTION_WINDOW // 2


def test_server_client_reset_is_a_remote_stream_reset() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ)
    p.client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    p.pump()
    events = p.take()
    assert events[-1] == StreamReset(1, h2.errors.ErrorCodes.CANCEL, remote=True)
    with pytest.raises(HttpCodecError):
        p.server.send_headers(1, ResponseHead(200))


def test_server_local_reset_sends_rst_stream_once() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ)
    p.pump()
    p.server.reset(1)
    p.server.reset(1)  # already closed: no second frame, no error
    rst = [f for f in frames(p.server.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, h2.errors.ErrorCodes.CANCEL)]


def test_server_graceful_goaway_from_the_client_lets_its_open_streams_finish() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ, end_stream=True)
    p.client.close_connection()  # "I open no more streams": nghttp does this when done
    p.pump()
    events = p.take()
    assert [type(e) for e in events] == [RequestReceived]
    assert p.server.draining and not p.server.closed
    p.server.send_headers(1, ResponseHead(200, Headers([("content-length", "2")])))
    p.server.send_data(1, b"ok", end_stream=True)
    assert p.server.data_to_send()


def test_server_goaway_with_an_error_ends_the_connection() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ, end_stream=True)
    p.pump()
    p.take()
    p.client.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
    p.pump()
    assert p.take() == [ConnectionEnded("GOAWAY ENHANCE_YOUR_CALM", error=True)]
    assert p.server.closed


def test_server_graceful_close_sends_goaway_and_lets_open_streams_finish() -> None:
    p = ServerPair()
    p.client.send_headers(1, REQ, end_stream=True)
    p.pump()
    p.take()
    p.server.close()
    assert p.server.draining
    p.pump()
    goaway = [e for e in p.take_client() if isinstance(e, h2.events.ConnectionTerminated)]
    assert len(goaway) == 1 and goaway[0].last_stream_id == 1
    assert goaway[0].error_code == h2.errors.ErrorCodes.NO_ERROR
    p.server.send_headers(1, ResponseHead(204), end_stream=True)
    assert p.server.data_to_send()


def test_server_refuses_streams_opened_after_its_goaway() -> None:
    server = H2Server()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.close()
    # the client sends before it sees the GOAWAY
    client.send_headers(1, REQ, end_stream=True)
    assert server.receive_data(client.data_to_send()) == []
    out = frames(server.data_to_send())
    rst = [f for f in out if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, h2.errors.ErrorCodes.REFUSED_STREAM)]


def test_server_protocol_error_ends_the_connection_with_goaway() -> None:
    server = H2Server()
    server.data_to_send()
    # a DATA frame on stream 0 is a connection error
    bad = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    events = server.receive_data(PREFACE + bad)
    assert len(events) == 1
    assert isinstance(events[0], ConnectionEnded) and events[0].error
    goaway = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert server.receive_data(b"more") == []


def test_server_peer_close_ends_the_connection() -> None:
    p = ServerPair()
    assert p.server.receive_data(b"") == [ConnectionEnded()]
    assert p.server.closed


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ([(f"x-h{i}", "v") for i in range(MAX_HEADERS)], None),
        ([(f"x-h{i}", "v") for i in range(MAX_HEADERS + 1)], 431),
        ([("x-big", "v" * (MAX_HEADER_BYTES - 200))], None),
        ([("x-big", "v" * MAX_HEADER_BYTES)], 431),
        # beyond HPACK's default 64 KiB but within what we advertise: still only this stream
        ([("x-big", "v" * (MAX_HEADER_BYTES + 8000))], 431),
    ],
)
def test_server_header_limits_refuse_the_stream_not_the_connection(
    fields: list[tuple[str, str]], status: int | None
) -> None:
    p = ServerPair()
    p.client.send_headers(1, [*REQ, *fields], end_stream=True)
    p.client.send_headers(3, REQ, end_stream=True)
    p.pump()
    events = p.take()
    if status is None:
        assert [type(e) for e in events] == [RequestReceived, RequestReceived]
    else:
        assert [type(e) for e in events] == [BadRequest, RequestReceived]
        assert events[0].status == status and events[0].stream_id == 1  # type: ignore[attr-defined]
    assert not p.server.closed


# Our client against an h2 server


class ClientPair(Pair):
    """Our client and an h2 server."""

    def __init__(self, *, max_streams: int | None = None) -> None:
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams}
        self.client = H2Client()
        self.server = h2_peer(client_side=False, settings=settings if max_streams else None)
        super().__init__(self.client, self.server)

    def take_server(self) -> list[h2.events.Event]:
        return self.take_peer()


def test_client_request_pseudo_headers_and_stripped_hop_by_hop() -> None:
    p = ClientPair()
    head = RequestHead(
        "POST",
        "/svc.Echo/Say",
        "echo:9000",
        Headers(
            [
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("connection", "keep-alive"),
                ("keep-alive", "1"),
                ("x-a", "1"),
            ]
        ),
    )
    sid = p.client.send_headers(head)
    assert sid == 1
    p.client.send_data(sid, b"msg", end_stream=False)
    p.client.send_end(sid, Headers([("x-trailer", "t")]))
    p.pump()
    got = p.take_server()
    req = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert req.headers == [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "echo:9000"),
        (":path", "/svc.Echo/Say"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-a", "1"),
    ]
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"msg"
    tr = next(e for e in got if isinstance(e, h2.events.TrailersReceived))
    assert tr.headers == [("x-trailer", "t")]
    assert p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True) == 3


def test_client_connect_has_only_method_and_authority() -> None:
    p = ClientPair()
    sid = p.client.send_headers(RequestHead("CONNECT", "", "db:5432"))
    p.pump()
    req = next(e for e in p.take_server() if isinstance(e, h2.events.RequestReceived))
    assert req.stream_id == sid
    assert req.headers == [(":method", "CONNECT"), (":authority", "db:5432")]


def test_client_response_informational_body_and_trailers() -> None:
    p = ClientPair()
    sid = p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True)
    p.pump()
    p.server.send_headers(sid, [(":status", "100")])
    p.server.send_headers(sid, [(":status", "200"), ("content-type", "x/y")])
    p.server.send_data(sid, b"abc")
    p.server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    p.pump()
    events = p.take()
    assert isinstance(events[0], InformationalReceived) and events[0].head.status == 100
    resp = events[1]
    assert isinstance(resp, ResponseReceived) and resp.head.status == 200 and not resp.end_stream
    assert resp.head.headers.items() == [("content-type", "x/y")]
    assert body_of(events, sid) == b"abc"
    assert events[-1] == MessageEnded(sid, Headers([("grpc-status", "0")]))


def test_client_trailers_only_response_ends_with_its_head() -> None:
    p = ClientPair()
    sid = p.client.send_headers(RequestHead("POST", "/x", "a"), end_stream=True)
    p.pump()
    p.server.send_headers(sid, [(":status", "200"), ("grpc-status", "12")], end_stream=True)
    p.pump()
    events = p.take()
    assert len(events) == 1
    assert isinstance(events[0], ResponseReceived) and events[0].end_stream


def test_client_respects_the_servers_concurrency_limit() -> None:
    p = ClientPair(max_streams=2)
    assert p.client.can_open
    s1 = p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True)
    p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True)
    assert not p.client.can_open
    p.pump()
    p.server.send_headers(s1, [(":status", "204")], end_stream=True)
    p.pump()
    assert p.client.can_open


def test_client_refused_stream_and_goaway() -> None:
    p = ClientPair()
    sid = p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True)
    p.pump()
    p.server.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    p.server.close_connection(h2.errors.ErrorCodes.NO_ERROR)
    p.pump()
    events = p.take()
    assert events == [StreamReset(sid, h2.errors.ErrorCodes.REFUSED_STREAM, remote=True)]
    assert p.client.draining and not p.client.can_open


def test_client_graceful_goaway_finishes_processed_streams_and_refuses_the_rest() -> None:
    p = ClientPair()
    s1 = p.client.send_headers(RequestHead("GET", "/1", "a"), end_stream=True)
    s3 = p.client.send_headers(RequestHead("GET", "/3", "a"), end_stream=True)
    s5 = p.client.send_headers(RequestHead("GET", "/5", "a"), end_stream=True)
    p.pump()
    p.take_server()
    # what a server shutting down gracefully sends: GOAWAY naming the last stream it took,
    # then the responses of the streams it took
    p.server.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=s3)
    wire = p.server.data_to_send()
    # h2 sends nothing after its own GOAWAY: the answers are framed by hand
    answer_frames = _headers_frame(s1, b"\x88", end=True) + _headers_frame(s3, b"\x88", end=True)
    # delivered one byte at a time: the GOAWAY splitter must not care how bytes arrive
    events: list[Event] = []
    for i in range(len(wire + answer_frames)):
        events += p.client.receive_data((wire + answer_frames)[i : i + 1])
    assert StreamReset(s5, h2.errors.ErrorCodes.REFUSED_STREAM, remote=True) in events
    heads = [e for e in events if isinstance(e, ResponseReceived)]
    assert [(e.stream_id, e.head.status, e.end_stream) for e in heads] == [
        (s1, 200, True),
        (s3, 200, True),
    ]
    assert p.client.draining and not p.client.can_open and not p.client.closed
    assert p.client.open_stream_count == 0


def test_client_goaway_with_an_error_ends_the_connection() -> None:
    p = ClientPair()
    p.client.send_headers(RequestHead("GET", "/", "a"), end_stream=True)
    p.pump()
    p.server.close_connection(h2.errors.ErrorCodes.INTERNAL_ERROR)
    p.pump()
    assert p.take() == [ConnectionEnded("GOAWAY INTERNAL_ERROR", error=True)]
    assert p.client.closed and not p.client.can_open


def _headers_frame(stream_id: int, block: bytes, *, end: bool) -> bytes:
    """A HEADERS frame carrying an HPACK block (0x88 is `:status: 200` from the static
    table)."""
    flags = 0x4 | (0x1 if end else 0)
    return (
        len(block).to_bytes(3, "big") + bytes([0x1, flags]) + stream_id.to_bytes(4, "big") + block
    )


def test_client_send_data_respects_the_servers_window() -> None:
    p = ClientPair()
    sid = p.client.send_headers(RequestHead("POST", "/", "a"))
    body = b"z" * 100_000
    sent = p.client.send_data(sid, body, end_stream=True)
    assert sent == 65535  # h2's default window: the server never raised it
    p.pump()
    got = [e for e in p.take_server() if isinstance(e, h2.events.DataReceived)]
    for e in got:
        p.server.acknowledge_received_data(e.flow_controlled_length, sid)
    p.pump()
    assert any(isinstance(e, WindowOpened) for e in p.events)
    assert p.client.send_data(sid, body[sent:], end_stream=True) == len(body) - sent
    p.pump()
    ends = [e for e in p.take_server() if isinstance(e, h2.events.StreamEnded)]
    assert ends


# Back to back


def test_our_client_and_server_back_to_back_with_flow_control() -> None:
    client, server = H2Client(), H2Server()
    events: list[Event] = []

    def pump() -> None:
        for _ in range(1000):
            a = client.data_to_send()
            if a:
                events.extend(server.receive_data(a))
            b = server.data_to_send()
            if b:
                events.extend(client.receive_data(b))
            if not a and not b:
                return

    pump()
    sid = client.send_headers(RequestHead("PUT", "/big", "svc"))
    body = bytes(range(256)) * (3 * MiB // 256)  # 3 MiB: three stream windows
    sent = 0
    received = bytearray()
    for _ in range(200):
        sent += client.send_data(sid, memoryview(body)[sent:], end_stream=True)
        pump()
        for e in events:
            if isinstance(e, DataReceived) and e.stream_id == sid:
                received += e.data
                server.acknowledge(sid, e.flow_controlled)
        done = any(isinstance(e, MessageEnded) for e in events)
        events.clear()
        pump()
        if done:
            break
    assert sent == len(body) and bytes(received) == body


@pytest.mark.parametrize("status", [204, 103])
def test_server_drops_body_framing_from_bodiless_responses(status: int) -> None:
    """An upstream's `204` with Content-Length would make nghttp2 clients reset the stream."""
    p = ServerPair()
    p.client.send_headers(1, REQ, end_stream=True)
    p.pump()
    headers = Headers([("content-length", "6"), ("x-a", "1")])
    p.server.send_headers(1, ResponseHead(status, headers), end_stream=status >= 200)
    p.pump()
    got = [e for e in p.take_client() if hasattr(e, "headers")]
    assert got[0].headers == [(":status", str(status)), ("x-a", "1")]
