"""The sans-IO HBONE core, client and server wired back to back with no sockets."""

from __future__ import annotations

import hashlib
import struct

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, SettingsFrame, WindowUpdateFrame

from ztunnel_py.protocol.hbone import (
    CONNECTION_WINDOW,
    MAX_FRAME_SIZE,
    STREAM_WINDOW,
    ConnectionClosedError,
    ConnectionTerminated,
    ConnectRequest,
    DataReceived,
    ErrorCodes,
    Event,
    GoAwayReceived,
    HboneClient,
    HboneServer,
    PingAcknowledged,
    RequestRefused,
    RequestRejected,
    Response,
    StreamClosedError,
    StreamEnded,
    StreamLimitError,
    StreamReset,
    WindowOpened,
)

MiB = 1024 * 1024


class Pair:
    """A client and a server whose output is fed to each other until both are quiet."""

    def __init__(self) -> None:
        self.client = HboneClient()
        self.server = HboneServer()
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.auto_ack_client = True
        self.auto_ack_server = True
        self.client_data: dict[int, bytearray] = {}
        self.server_data: dict[int, bytearray] = {}
        self.pump()

    def pump(self) -> None:
        for _ in range(10_000):
            to_server = self.client.data_to_send()
            if to_server:
                self._deliver(self.server, to_server, self.server_events, self.server_data, True)
            to_client = self.server.data_to_send()
            if to_client:
                self._deliver(self.client, to_client, self.client_events, self.client_data, False)
            if not to_server and not to_client:
                return
        raise AssertionError("endpoints never went quiet")

    def _deliver(
        self,
        conn: HboneClient | HboneServer,
        data: bytes,
        sink: list[Event],
        received: dict[int, bytearray],
        server: bool,
    ) -> None:
        events = conn.receive_data(data)
        for event in events:
            if isinstance(event, DataReceived):
                received.setdefault(event.stream_id, bytearray()).extend(event.data)
                if self.auto_ack_server if server else self.auto_ack_client:
                    conn.acknowledge_received_data(event.stream_id, len(event.data))
        sink.extend(events)

    def take(self, side: str) -> list[Event]:
        sink = self.client_events if side == "client" else self.server_events
        events = [e for e in sink if not isinstance(e, (DataReceived, WindowOpened))]
        sink.clear()
        return events

    def open(
        self, authority: str = "10.0.0.2:8080", headers: tuple[tuple[str, str], ...] = ()
    ) -> int:
        stream_id = self.client.start_connect(authority, headers)
        self.pump()
        requests = [e for e in self.take("server") if isinstance(e, ConnectRequest)]
        assert [r.stream_id for r in requests] == [stream_id]
        self.server.respond(stream_id, 200)
        self.pump()
        assert Response(stream_id, 200, ()) in self.take("client")
        return stream_id


def frames(data: bytes) -> list[Frame]:
    """Parse a byte string of HTTP/2 frames (no preface)."""
    out = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def settings_of(conn: HboneClient | HboneServer, preface: bool) -> dict[int, int]:
    data = conn.data_to_send()
    if preface:
        data = data[24:]
    settings = [f for f in frames(data) if isinstance(f, SettingsFrame)]
    return dict(settings[0].settings)


def terminated(events: list[Event]) -> ConnectionTerminated:
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(found) == 1, events
    return found[0]


# --- settings -----------------------------------------------------------------------------


def test_client_advertises_ztunnel_settings_and_connection_window() -> None:
    client = HboneClient()
    data = client.data_to_send()
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    parsed = frames(data[24:])
    settings = parsed[0]
    assert isinstance(settings, SettingsFrame)
    assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 4 * MiB
    assert settings.settings[SettingsFrame.MAX_FRAME_SIZE] == MiB
    assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 16 * 1024
    assert settings.settings[SettingsFrame.ENABLE_PUSH] == 0
    window_updates = [f for f in parsed if isinstance(f, WindowUpdateFrame)]
    assert [(w.stream_id, w.window_increment) for w in window_updates] == [(0, 16 * MiB - 65535)]


def test_server_advertises_ztunnel_settings() -> None:
    settings = settings_of(HboneServer(), preface=False)
    assert settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 4 * MiB
    assert settings[SettingsFrame.MAX_FRAME_SIZE] == MiB
    assert settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 64 * 1024
    assert settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 200


# --- happy paths --------------------------------------------------------------------------


def test_connect_carries_authority_and_headers_only() -> None:
    pair = Pair()
    headers = (
        ("baggage", "k8s.namespace.name=default"),
        ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-00"),
    )
    stream_id = pair.client.start_connect("[fd00::1]:80", headers)
    pair.pump()
    assert pair.take("server") == [ConnectRequest(stream_id, "[fd00::1]:80", headers)]


def test_many_streams_with_independent_data() -> None:
    pair = Pair()
    ids = [pair.open(f"10.0.0.{i}:80") for i in range(1, 51)]
    for stream_id in ids:
        pair.client.send_data(stream_id, f"hello {stream_id}".encode())
        pair.server.send_data(stream_id, f"reply {stream_id}".encode())
    pair.pump()
    for stream_id in ids:
        assert pair.server_data[stream_id] == f"hello {stream_id}".encode()
        assert pair.client_data[stream_id] == f"reply {stream_id}".encode()


def test_client_stream_limit_is_min_of_local_and_peer() -> None:
    pair = Pair()
    assert pair.client.available_streams == 100
    ids = [pair.client.start_connect("10.0.0.1:80") for _ in range(100)]
    assert pair.client.available_streams == 0
    with pytest.raises(StreamLimitError):
        pair.client.start_connect("10.0.0.1:80")
    pair.pump()
    pair.client.reset_stream(ids[0])
    assert pair.client.available_streams == 1


def test_peer_max_concurrent_streams_limits_client() -> None:
    client = HboneClient()
    server = HboneServer(max_concurrent_streams=3)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    assert client.available_streams == 3


def test_half_close_both_ways() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.client.send_data(stream_id, b"request")
    pair.client.end_stream(stream_id)
    pair.pump()
    assert pair.take("server") == [StreamEnded(stream_id)]
    assert pair.server_data[stream_id] == b"request"
    with pytest.raises(StreamClosedError):
        pair.client.send_data(stream_id, b"more")
    # The other direction is still open after the client's half-close.
    pair.server.send_data(stream_id, b"response")
    pair.server.end_stream(stream_id)
    pair.pump()
    assert pair.take("client") == [StreamEnded(stream_id)]
    assert pair.client_data[stream_id] == b"response"
    assert pair.client.stream_count == 0
    assert pair.server.stream_count == 0


def test_server_half_closes_first() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.server.end_stream(stream_id)
    pair.pump()
    assert pair.take("client") == [StreamEnded(stream_id)]
    pair.client.send_data(stream_id, b"still flowing")
    pair.client.end_stream(stream_id)
    pair.pump()
    assert pair.server_data[stream_id] == b"still flowing"
    assert pair.take("server") == [StreamEnded(stream_id)]


def test_connect_with_end_stream_can_still_be_answered() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = HboneServer()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "1.2.3.4:5")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert ConnectRequest(1, "1.2.3.4:5", ()) in events
    assert StreamEnded(1) in events
    server.respond(1, 200)
    server.send_data(1, b"one way")
    server.end_stream(1)
    got = client.receive_data(server.data_to_send())
    data = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    assert data == b"one way"
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)


def test_data_is_a_slice_of_the_input_buffer() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.client.send_data(stream_id, b"z" * 300_000)
    wire = bytearray(pair.client.data_to_send())
    events = pair.server.receive_data(wire)
    pieces = [e.data for e in events if isinstance(e, DataReceived)]
    assert sum(len(p) for p in pieces) == 300_000
    assert all(p.obj is wire for p in pieces)


def test_large_payloads_are_queued_by_reference() -> None:
    pair = Pair()
    stream_id = pair.open()
    big = bytearray(b"b" * 100_000)
    pair.client.send_data(stream_id, big)
    pair.client.send_data(stream_id, b"small")
    buffers = pair.client.buffers_to_send()
    # [header], [payload by reference], [header + small payload packed together]
    assert len(buffers) == 3
    assert isinstance(buffers[1], memoryview) and buffers[1].obj is big
    assert bytes(buffers[2])[9:] == b"small"
    assert pair.client.buffers_to_send() == []
    events = pair.server.receive_data(b"".join(buffers))
    assert b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived)) == (
        bytes(big) + b"small"
    )


def test_peer_settings_received() -> None:
    client, server = HboneClient(), HboneServer()
    assert not client.peer_settings_received
    server.receive_data(client.data_to_send())
    assert server.peer_settings_received
    client.receive_data(server.data_to_send())
    assert client.peer_settings_received


def test_byte_at_a_time_input_gives_the_same_stream() -> None:
    pair = Pair()
    stream_id = pair.open()
    payload = bytes(range(256)) * 300
    pair.client.send_data(stream_id, payload)
    pair.client.end_stream(stream_id)
    wire = pair.client.data_to_send()
    got = bytearray()
    events: list[Event] = []
    for i in range(len(wire)):
        for event in pair.server.receive_data(wire[i : i + 1]):
            if isinstance(event, DataReceived):
                got += event.data
            else:
                events.append(event)
    assert got == payload
    assert events == [StreamEnded(stream_id)]


def test_frames_follow_peer_max_frame_size() -> None:
    pair = Pair()
    stream_id = pair.open()
    assert pair.client.send_data(stream_id, bytes(3 * MiB + 5)) == 3 * MiB + 5
    sizes = [len(f.data) for f in frames(pair.client.data_to_send()) if isinstance(f, DataFrame)]
    assert sizes == [MiB, MiB, MiB, 5]


def test_frames_respect_a_peer_with_default_frame_size() -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = HboneClient()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    stream_id = client.start_connect("10.1.1.1:443")
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[0], h2.events.RequestReceived)
    server.send_headers(stream_id, [(":status", "200")])
    client.receive_data(server.data_to_send())
    # A stock h2 peer: 64 KiB stream window, 16 KiB frames.
    sent = client.send_data(stream_id, bytes(100_000))
    assert sent == 65535
    data_frames = [f for f in frames(client.data_to_send()) if isinstance(f, DataFrame)]
    assert max(len(f.data) for f in data_frames) == 16384


# --- interop with stock h2 ----------------------------------------------------------------


def test_stock_h2_client_talks_to_our_server() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server = HboneServer()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.9:9000")])
    client.send_data(1, b"ping from h2", end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert events[0] == ConnectRequest(1, "10.0.0.9:9000", ())
    assert [bytes(e.data) for e in events if isinstance(e, DataReceived)] == [b"ping from h2"]
    assert events[-1] == StreamEnded(1)
    server.respond(1, 200, [("baggage", "service.name=b")])
    server.send_data(1, b"pong")
    server.end_stream(1)
    got = client.receive_data(server.data_to_send())
    response = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    assert (b":status", b"200") in response.headers
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"pong"


# --- flow control -------------------------------------------------------------------------


def test_stream_window_blocks_a_sender_until_the_reader_acknowledges() -> None:
    pair = Pair()
    pair.auto_ack_server = False
    stream_id = pair.open()
    total = pair.client.send_data(stream_id, bytes(10 * MiB))
    pair.pump()
    assert total == STREAM_WINDOW
    assert pair.client.send_window(stream_id) == 0
    assert pair.client.send_data(stream_id, b"x") == 0
    assert len(pair.server_data[stream_id]) == STREAM_WINDOW
    # Acknowledging less than a quarter window sends no update yet.
    pair.server.acknowledge_received_data(stream_id, STREAM_WINDOW // 8)
    pair.pump()
    assert pair.client.send_window(stream_id) == 0
    pair.server.acknowledge_received_data(stream_id, STREAM_WINDOW // 8)
    pair.pump()
    assert WindowOpened(stream_id) in pair.client_events
    assert pair.client.send_window(stream_id) == STREAM_WINDOW // 4
    assert pair.client.send_data(stream_id, bytes(10 * MiB)) == STREAM_WINDOW // 4


def test_connection_window_spans_streams() -> None:
    pair = Pair()
    pair.auto_ack_server = False
    ids = [pair.open() for _ in range(5)]
    sent = [pair.client.send_data(i, bytes(STREAM_WINDOW)) for i in ids]
    assert sent == [STREAM_WINDOW] * 4 + [0]
    pair.pump()
    assert sum(map(len, pair.server_data.values())) == CONNECTION_WINDOW
    # Freeing one stream's bytes reopens the connection window for the fifth stream.
    pair.server.acknowledge_received_data(ids[0], STREAM_WINDOW)
    pair.pump()
    assert WindowOpened(0) in pair.client_events
    assert pair.client.send_data(ids[4], bytes(STREAM_WINDOW)) == STREAM_WINDOW


def test_overrunning_a_stream_window_resets_the_stream() -> None:
    pair = Pair()
    stream_id = pair.open()
    frame = DataFrame(stream_id, bytes(MiB)).serialize()
    events: list[Event] = []
    for _ in range(5):
        events += pair.server.receive_data(frame)
    assert StreamReset(stream_id, ErrorCodes.FLOW_CONTROL_ERROR, remote=False) in events
    assert not pair.server.is_closed


def test_overrunning_the_connection_window_terminates() -> None:
    pair = Pair()
    ids = [pair.open() for _ in range(5)]
    events: list[Event] = []
    for stream_id in ids:
        frame = DataFrame(stream_id, bytes(MiB)).serialize()
        for _ in range(4):
            events += pair.server.receive_data(frame)
    end = terminated(events)
    assert end.error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert "connection window" in end.reason
    received = sum(len(e.data) for e in events if isinstance(e, DataReceived))
    assert received == CONNECTION_WINDOW


def test_long_transfer_beyond_two_gib_of_window_updates() -> None:
    """h2 never sees our DATA nor the peer's WINDOW_UPDATEs, so it cannot think a window
    overflowed however many bytes go through (2^31 - 1 is its ceiling)."""
    client, server = HboneClient(), HboneServer()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    stream_id = client.start_connect("10.0.0.1:80")
    server.receive_data(client.data_to_send())
    server.respond(stream_id, 200)
    client.receive_data(server.data_to_send())
    chunk = bytes(MiB)
    received = 0
    for _ in range(2300):
        assert client.send_data(stream_id, chunk) == MiB
        for event in server.receive_data(client.data_to_send()):
            assert isinstance(event, DataReceived)
            received += len(event.data)
            server.acknowledge_received_data(stream_id, len(event.data))
        for event in client.receive_data(server.data_to_send()):
            assert isinstance(event, WindowOpened)
    assert received == 2300 * MiB > 2**31


# --- CONNECT validation -------------------------------------------------------------------


def raw_pair() -> tuple[h2.connection.H2Connection, HboneServer]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server = HboneServer()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_non_connect_methods_get_400(method: str) -> None:
    client, server = raw_pair()
    client.send_headers(
        1, [(":method", method), (":authority", "a:1"), (":scheme", "https"), (":path", "/")]
    )
    events = server.receive_data(client.data_to_send())
    assert events == [RequestRejected(1, 400, f"method {method!r} is not CONNECT")]
    answer = client.receive_data(server.data_to_send())
    response = next(e for e in answer if isinstance(e, h2.events.ResponseReceived))
    assert (b":status", b"400") in response.headers
    assert any(isinstance(e, h2.events.StreamEnded) for e in answer)
    assert not any(isinstance(e, h2.events.DataReceived) for e in answer)
    # The request was still open: the server tells the client to stop sending.
    assert any(
        isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.NO_ERROR for e in answer
    )
    assert server.stream_count == 0


@pytest.mark.parametrize(
    "authority",
    [
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:http",
        ":80",
        "fd00::1:80",
        "[fd00::1]",
        "[fd00::zz]:80",
        "[fd00::1]80",
        "bad host:80",
        "-bad.example:80",
        "300.1.1.1:80",
        "a..b:80",
        "",
    ],
)
def test_malformed_authority_gets_400(authority: str) -> None:
    client, server = raw_pair()
    client.send_headers(1, [(":method", "CONNECT"), (":authority", authority)], end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, RequestRejected) and rejected.status == 400
    assert repr(authority) in rejected.reason or authority == ""
    answer = client.receive_data(server.data_to_send())
    response = next(e for e in answer if isinstance(e, h2.events.ResponseReceived))
    assert (b":status", b"400") in response.headers


def test_client_refuses_bad_authority_and_headers() -> None:
    client = HboneClient()
    with pytest.raises(ValueError, match="PORT"):
        client.start_connect("10.0.0.1")
    with pytest.raises(ValueError, match="connection-specific"):
        client.start_connect("10.0.0.1:80", [("connection", "close")])
    with pytest.raises(ValueError, match="invalid value"):
        client.start_connect("10.0.0.1:80", [("baggage", "a\r\nb")])


def lax_client() -> tuple[h2.connection.H2Connection, HboneServer]:
    """A stock h2 client that sends what it is told, and has not seen the server's SETTINGS
    (so it knows no stream limit)."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.initiate_connection()
    server = HboneServer(max_concurrent_streams=2)
    server.receive_data(client.data_to_send())
    return client, server


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (
            [(":method", "CONNECT"), (":authority", "a:1"), (":scheme", "https"), (":path", "/")],
            ":path",
        ),
        ([(":method", "CONNECT")], ":authority"),
        ([(":authority", "a:1")], ":method"),
        ([(":method", "CONNECT"), (":authority", "a:1"), (":authority", "b:1")], "duplicate"),
        ([(":method", "CONNECT"), ("baggage", "x"), (":authority", "a:1")], "out of sequence"),
        ([(":method", "CONNECT"), (":authority", "a:1"), ("Baggage", "x")], "uppercase"),
        ([(":method", "CONNECT"), (":authority", "a:1"), ("connection", "close")], "Connection"),
        # Extended CONNECT (RFC 8441) is not HBONE, and this one lacks its :scheme and :path.
        ([(":method", "CONNECT"), (":authority", "a:1"), (":protocol", "x")], ":scheme"),
    ],
)
def test_a_malformed_request_is_a_stream_error(
    headers: list[tuple[str, str]], problem: str
) -> None:
    """RFC 9113 8.1.1: a malformed request resets its stream; the streams beside it go on."""
    client, server = lax_client()
    keep = 1
    client.send_headers(keep, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    client.send_headers(3, headers)
    events = server.receive_data(client.data_to_send())
    assert events[0] == ConnectRequest(keep, "10.0.0.1:80", ())
    refused = events[1]
    assert isinstance(refused, RequestRefused) and refused.stream_id == 3, events
    assert refused.error_code == ErrorCodes.PROTOCOL_ERROR
    assert problem.lower() in refused.reason.lower()
    assert not server.is_closed
    answer = client.receive_data(server.data_to_send())
    assert any(
        isinstance(e, h2.events.StreamReset) and e.stream_id == 3 and e.error_code == 1
        for e in answer
    )
    server.respond(keep, 200)
    client.receive_data(server.data_to_send())
    client.send_data(keep, b"still carried")
    assert [bytes(e.data) for e in server.receive_data(client.data_to_send())] == [b"still carried"]


def test_a_stream_beyond_max_concurrent_streams_is_refused_alone() -> None:
    """RFC 9113 5.1.2: REFUSED_STREAM for the extra stream, not a connection error."""
    client, server = lax_client()
    for stream_id in (1, 3, 5):
        client.send_headers(stream_id, [(":method", "CONNECT"), (":authority", "a:1")])
    events = server.receive_data(client.data_to_send())
    assert events[:2] == [ConnectRequest(1, "a:1", ()), ConnectRequest(3, "a:1", ())]
    assert events[2:] == [
        RequestRefused(5, ErrorCodes.REFUSED_STREAM, "2 requests are still being handled")
    ]
    assert not server.is_closed
    answer = client.receive_data(server.data_to_send())
    assert any(
        isinstance(e, h2.events.StreamReset) and e.stream_id == 5 and e.error_code == 7
        for e in answer
    )


# --- responses ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 503, 400])
def test_error_status_closes_the_stream(status: int) -> None:
    pair = Pair()
    stream_id = pair.client.start_connect("10.0.0.1:80")
    pair.pump()
    pair.take("server")
    pair.server.respond(stream_id, status)
    pair.pump()
    assert pair.take("client") == [Response(stream_id, status, ())]
    with pytest.raises(StreamClosedError):
        pair.client.send_data(stream_id, b"x")
    assert pair.client.stream_count == 0
    assert pair.server.stream_count == 0
    assert pair.client.available_streams == 100
    with pytest.raises(StreamClosedError):
        pair.server.respond(stream_id, 200)


def test_respond_validates() -> None:
    pair = Pair()
    stream_id = pair.client.start_connect("10.0.0.1:80")
    pair.pump()
    with pytest.raises(ValueError):
        pair.server.respond(stream_id, 100)
    with pytest.raises(StreamClosedError):
        pair.server.respond(99, 200)
    with pytest.raises(StreamClosedError):
        pair.server.send_data(stream_id, b"before the answer")
    pair.server.respond(stream_id, 200)
    with pytest.raises(StreamClosedError):
        pair.server.respond(stream_id, 200)


# --- oversized headers --------------------------------------------------------------------


def test_oversized_request_headers_refuse_the_connection() -> None:
    pair = Pair()
    pair.client.start_connect("10.0.0.1:80", [("baggage", "x" * 70_000)])
    pair.pump()
    assert terminated(pair.take("server")).error_code == ErrorCodes.ENHANCE_YOUR_CALM
    client_end = terminated(pair.take("client"))
    assert client_end.remote and client_end.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    with pytest.raises(ConnectionClosedError):
        pair.client.start_connect("10.0.0.1:80")


def test_oversized_response_headers_refuse_the_connection() -> None:
    pair = Pair()
    stream_id = pair.client.start_connect("10.0.0.1:80")
    pair.pump()
    pair.server.respond(stream_id, 200, [("baggage", "y" * 20_000)])
    pair.pump()
    assert terminated(pair.take("client")).error_code == ErrorCodes.ENHANCE_YOUR_CALM


# --- resets and GOAWAY --------------------------------------------------------------------


def test_reset_mid_stream() -> None:
    pair = Pair()
    keep = pair.open()
    stream_id = pair.open()
    pair.client.send_data(stream_id, b"partial")
    pair.server.send_data(stream_id, b"in flight")
    # The client resets while the server's DATA is still on the wire.
    server_bytes = pair.server.data_to_send()
    pair.client.reset_stream(stream_id)
    assert pair.client.receive_data(server_bytes) == []
    pair.pump()
    assert StreamReset(stream_id, ErrorCodes.CANCEL, remote=True) in pair.take("server")
    with pytest.raises(StreamClosedError):
        pair.server.send_data(stream_id, b"x")
    # Resetting again is harmless, and the connection carries on.
    pair.client.reset_stream(stream_id)
    pair.client.send_data(keep, b"still alive")
    pair.pump()
    assert pair.server_data[keep] == b"still alive"
    assert not pair.client.is_closed and not pair.server.is_closed


def test_server_reset_reaches_client() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.server.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
    pair.pump()
    assert pair.take("client") == [StreamReset(stream_id, ErrorCodes.INTERNAL_ERROR, remote=True)]


def test_graceful_goaway_drains_existing_streams() -> None:
    pair = Pair()
    stream_id = pair.open()
    # A CONNECT the server has not seen yet when it sends GOAWAY is refused.
    pair.server.close()
    late = pair.client.start_connect("10.0.0.1:80")
    to_server = pair.client.data_to_send()
    assert pair.client.receive_data(pair.server.data_to_send()) == [
        StreamReset(late, ErrorCodes.REFUSED_STREAM, remote=True),
        GoAwayReceived(stream_id, 0, b""),
    ]
    assert pair.client.is_draining
    assert pair.client.available_streams == 0
    with pytest.raises(ConnectionClosedError, match="draining"):
        pair.client.start_connect("10.0.0.1:80")
    # The server refuses the late CONNECT without telling the application.
    assert pair.server.receive_data(to_server) == []
    pair.pump()
    assert pair.take("client") == []
    # The existing stream keeps working both ways.
    pair.client.send_data(stream_id, b"after goaway")
    pair.server.send_data(stream_id, b"still answering")
    pair.client.end_stream(stream_id)
    pair.server.end_stream(stream_id)
    pair.pump()
    assert pair.server_data[stream_id] == b"after goaway"
    assert pair.client_data[stream_id] == b"still answering"
    assert pair.client.stream_count == 0 and pair.server.stream_count == 0


def test_goaway_refuses_client_streams_above_last_stream_id() -> None:
    pair = Pair()
    first = pair.open()
    second = pair.client.start_connect("10.0.0.1:80")
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = first
    events = pair.client.receive_data(goaway.serialize())
    assert events == [
        StreamReset(second, ErrorCodes.REFUSED_STREAM, remote=True),
        GoAwayReceived(first, 0, b""),
    ]


def test_error_goaway_terminates() -> None:
    pair = Pair()
    pair.open()
    pair.server.close(ErrorCodes.INTERNAL_ERROR, "shutting down hard")
    assert pair.server.is_closed
    pair.pump()
    end = terminated(pair.take("client"))
    assert end.remote and end.error_code == ErrorCodes.INTERNAL_ERROR
    assert "shutting down hard" in end.reason
    assert pair.client.receive_data(SettingsFrame(0).serialize()) == []


def test_ping_is_acknowledged() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.pump()
    assert pair.take("client") == [PingAcknowledged(b"12345678")]


# --- bad input ----------------------------------------------------------------------------


def test_bad_preface() -> None:
    server = HboneServer()
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    end = terminated(events)
    assert end.error_code == ErrorCodes.PROTOCOL_ERROR and "preface" in end.reason
    goaway = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway[-1].error_code == ErrorCodes.PROTOCOL_ERROR
    assert server.receive_data(b"more") == []


def test_garbage_to_client() -> None:
    client = HboneClient()
    client.data_to_send()
    events = client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert terminated(events).error_code in (ErrorCodes.FRAME_SIZE_ERROR, ErrorCodes.PROTOCOL_ERROR)
    assert any(isinstance(f, GoAwayFrame) for f in frames(client.data_to_send()))
    with pytest.raises(ConnectionClosedError):
        client.start_connect("10.0.0.1:80")


def test_oversized_frame() -> None:
    pair = Pair()
    header = struct.pack(">I", (MAX_FRAME_SIZE + 1) << 8 | 0x6)[0:4] + b"\x00" + bytes(4)
    end = terminated(pair.server.receive_data(header))
    assert end.error_code == ErrorCodes.FRAME_SIZE_ERROR


def test_data_on_stream_zero() -> None:
    pair = Pair()
    frame = struct.pack(">I", 1 << 8 | 0x0) + b"\x00" + bytes(4) + b"x"
    end = terminated(pair.server.receive_data(frame))
    assert "stream 0" in end.reason


def test_data_on_an_idle_stream() -> None:
    pair = Pair()
    end = terminated(pair.server.receive_data(DataFrame(41, b"hello").serialize()))
    assert end.error_code == ErrorCodes.PROTOCOL_ERROR


def test_data_after_end_stream() -> None:
    pair = Pair()
    stream_id = pair.open()
    pair.client.end_stream(stream_id)
    pair.pump()
    # DATA on a half-closed (remote) stream is a stream error: only that stream dies.
    events = pair.server.receive_data(DataFrame(stream_id, b"late").serialize())
    assert events == [StreamReset(stream_id, ErrorCodes.STREAM_CLOSED, remote=False)]
    assert not pair.server.is_closed


def test_data_before_response() -> None:
    pair = Pair()
    stream_id = pair.client.start_connect("10.0.0.1:80")
    pair.pump()
    events = pair.client.receive_data(DataFrame(stream_id, b"too early").serialize())
    assert terminated(events).error_code == ErrorCodes.PROTOCOL_ERROR


def test_zero_window_update_and_overflow() -> None:
    pair = Pair()
    zero = struct.pack(">I", 4 << 8 | 0x8) + b"\x00" + bytes(4) + bytes(4)
    assert terminated(pair.client.receive_data(zero)).error_code == ErrorCodes.PROTOCOL_ERROR
    pair = Pair()
    update = WindowUpdateFrame(0)
    update.window_increment = 2**31 - 1
    end = terminated(pair.client.receive_data(update.serialize()))
    assert end.error_code == ErrorCodes.FLOW_CONTROL_ERROR


def test_stream_window_update_overflow_resets_only_the_stream() -> None:
    pair = Pair()
    stream_id = pair.open()
    update = WindowUpdateFrame(stream_id)
    update.window_increment = 2**31 - 1
    events = pair.client.receive_data(update.serialize())
    assert events == [StreamReset(stream_id, ErrorCodes.FLOW_CONTROL_ERROR, remote=False)]
    assert not pair.client.is_closed


def test_padded_data_frames() -> None:
    pair = Pair()
    pair.auto_ack_server = False
    stream_id = pair.open()
    payload = b"padded payload"
    received = bytearray()
    # Enough padded frames that the padding alone would exhaust the window if it were not
    # credited back automatically.
    for _ in range(20_000):
        frame = DataFrame(stream_id, payload, flags=["PADDED"], pad_length=255)
        for event in pair.server.receive_data(frame.serialize()):
            assert isinstance(event, DataReceived)
            received += event.data
            pair.server.acknowledge_received_data(stream_id, len(event.data))
    assert received == payload * 20_000
    updates = [f for f in frames(pair.server.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert {u.stream_id for u in updates} == {0, stream_id}
    final = DataFrame(stream_id, b"end", flags=["PADDED", "END_STREAM"], pad_length=3)
    events = pair.server.receive_data(final.serialize())
    assert [bytes(e.data) for e in events if isinstance(e, DataReceived)] == [b"end"]
    assert events[-1] == StreamEnded(stream_id)


def test_padding_longer_than_frame() -> None:
    pair = Pair()
    stream_id = pair.open()
    # Length 4: pad length byte says 10.
    frame = (
        struct.pack(">I", 4 << 8 | 0x0) + b"\x08" + struct.pack(">I", stream_id) + b"\x0a" + b"abc"
    )
    end = terminated(pair.server.receive_data(frame))
    assert end.error_code == ErrorCodes.PROTOCOL_ERROR and "padding" in end.reason


def test_data_interleaved_in_a_header_block() -> None:
    pair = Pair()
    stream_id = pair.open()
    headers = struct.pack(">I", 0 << 8 | 0x1) + b"\x00" + struct.pack(">I", stream_id + 2)
    data = DataFrame(stream_id, b"x").serialize()
    end = terminated(pair.server.receive_data(headers + data))
    assert end.error_code == ErrorCodes.PROTOCOL_ERROR


def test_hash_of_interleaved_streams_survives_partial_delivery() -> None:
    pair = Pair()
    ids = [pair.open() for _ in range(4)]
    expected = {}
    for n, stream_id in enumerate(ids):
        blob = bytes([n]) * 100_000 + b"end"
        expected[stream_id] = hashlib.sha256(blob).hexdigest()
        pair.client.send_data(stream_id, blob)
    wire = pair.client.data_to_send()
    got: dict[int, bytearray] = {}
    for start in range(0, len(wire), 7919):
        for event in pair.server.receive_data(wire[start : start + 7919]):
            assert isinstance(event, DataReceived)
            got.setdefault(event.stream_id, bytearray()).extend(event.data)
    assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == expected


# --- abuse: rapid reset (CVE-2023-44487) and unfinished work ------------------------------


def rapid_reset(pair: Pair, count: int) -> list[Event]:
    """`count` CONNECTs, each reset by the client right after its HEADERS, in batches of 100
    that the server's application finishes at once (it drops the work of reset streams)."""
    events: list[Event] = []
    for start in range(0, count, 100):
        for _ in range(min(100, count - start)):
            pair.client.reset_stream(pair.client.start_connect("10.0.0.1:80"))
        batch = pair.server.receive_data(pair.client.data_to_send())
        for event in batch:
            if isinstance(event, StreamReset):
                pair.server.finish_request(event.stream_id)
        events += batch
    return events


def test_rapid_reset_closes_the_connection_with_enhance_your_calm() -> None:
    pair = Pair()
    events = rapid_reset(pair, 400)
    assert sum(isinstance(e, ConnectRequest) for e in events) == 400
    assert not pair.server.is_closed
    events = rapid_reset(pair, 200)
    end = terminated(events)
    assert end.error_code == ErrorCodes.ENHANCE_YOUR_CALM and not end.remote
    assert "rapid reset" in end.reason
    # Envoy's rule: checked from the 500th request on, at least half of them reset early.
    assert sum(isinstance(e, ConnectRequest) for e in events) == 100
    goaway = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway[-1].last_stream_id == 2 * 500 - 1


def test_requests_reset_after_a_second_unanswered_are_not_premature() -> None:
    """A client giving up on a slow upstream is not attacking."""
    now = [0.0]
    client = HboneClient()
    server = HboneServer(clock=lambda: now[0])
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    for _ in range(600):
        stream_id = client.start_connect("10.0.0.1:80")
        server.receive_data(client.data_to_send())
        now[0] += 1.5
        client.reset_stream(stream_id)
        assert server.receive_data(client.data_to_send()) == [
            StreamReset(stream_id, ErrorCodes.CANCEL, remote=True)
        ]
        server.finish_request(stream_id)
    assert not server.is_closed


def test_streams_reset_after_their_answer_are_not_premature() -> None:
    pair = Pair()
    for _ in range(600):
        stream_id = pair.open()
        pair.client.reset_stream(stream_id)
        pair.pump()
        pair.server.finish_request(stream_id)
    assert not pair.server.is_closed and not pair.client.is_closed


def test_unfinished_requests_count_toward_the_stream_limit() -> None:
    client = HboneClient()
    server = HboneServer(max_concurrent_streams=3)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    first = [client.start_connect("10.0.0.1:80") for _ in range(3)]
    for stream_id in first:
        client.reset_stream(stream_id)
    events = server.receive_data(client.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, ConnectRequest)] == first
    # The streams are gone on the wire, but their handlers have not finished: no slot is free.
    fourth = client.start_connect("10.0.0.1:80")
    events = server.receive_data(client.data_to_send())
    assert events == [
        RequestRefused(fourth, ErrorCodes.REFUSED_STREAM, "3 requests are still being handled")
    ]
    answer = client.receive_data(server.data_to_send())
    assert answer == [StreamReset(fourth, ErrorCodes.REFUSED_STREAM, remote=True)]
    server.finish_request(first[0])
    fifth = client.start_connect("10.0.0.1:80")
    events = server.receive_data(client.data_to_send())
    assert [e.stream_id for e in events if isinstance(e, ConnectRequest)] == [fifth]


def test_a_client_that_keeps_hitting_the_stream_limit_is_disconnected() -> None:
    client = HboneClient()
    server = HboneServer(max_concurrent_streams=1)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.reset_stream(client.start_connect("10.0.0.1:80"))
    server.receive_data(client.data_to_send())
    refused = 0
    events: list[Event] = []
    for _ in range(2000):
        client.reset_stream(client.start_connect("10.0.0.1:80"))
        events = server.receive_data(client.data_to_send())
        if server.is_closed:
            break
        refused += sum(isinstance(e, RequestRefused) for e in events)
    assert terminated(events).error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # The Rust h2 crate's budget of streams reset for the client's misbehaviour.
    assert refused == 1024


# --- abuse: CONTINUATION flood --------------------------------------------------------------


def test_a_header_block_larger_than_the_header_list_limit_ends_the_connection_early() -> None:
    pair = Pair()
    # HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB that never end the block:
    # buffering them all would cost up to 64 frames x 1 MiB per connection.
    block = b"\x00" * 16 * 1024
    headers = struct.pack(">I", len(block) << 8 | 0x1) + b"\x00" + struct.pack(">I", 1)
    events = pair.server.receive_data(headers + block)
    assert not pair.server.is_closed
    continuation = struct.pack(">I", len(block) << 8 | 0x9) + b"\x00" + struct.pack(">I", 1)
    frames_sent = 1
    while not pair.server.is_closed and frames_sent < 64:
        events = pair.server.receive_data(continuation + block)
        frames_sent += 1
    end = terminated(events)
    assert end.error_code == ErrorCodes.ENHANCE_YOUR_CALM and "header block" in end.reason
    # 64 KiB is the server's header list limit: the block was cut at the frame that passed it.
    assert frames_sent == 5


def test_a_large_header_block_within_the_limit_is_accepted_across_continuations() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server = HboneServer()
    server.receive_data(client.data_to_send())
    # The client has not seen our SETTINGS: it cuts the block into 16 KiB frames.
    baggage = "x" * 60_000
    client.send_headers(1, [(":method", "CONNECT"), (":authority", "a:1"), ("baggage", baggage)])
    wire = client.data_to_send()
    assert sum(1 for f in frames(wire) if f.type == 0x9) >= 3
    assert server.receive_data(wire) == [ConnectRequest(1, "a:1", (("baggage", baggage),))]


def test_a_long_lived_connection_keeps_a_bounded_record_of_closed_streams() -> None:
    # A pooled connection between two agents carries a stream per proxied connection for
    # hours; h2 remembered how each of 65,536 closed streams ended (~6.5 MB per side), which a
    # 30-minute soak showed as steady memory growth.
    pair = Pair()
    for _ in range(3000):
        stream_id = pair.open()
        for side in (pair.client, pair.server):
            side.end_stream(stream_id)
        pair.pump()
        pair.server.finish_request(stream_id)  # its handler is done
        pair.take("client")
        pair.take("server")
    assert pair.client.stream_count == pair.server.stream_count == 0
    for side in (pair.client, pair.server):
        assert len(side._h2._closed_streams) <= 1024
