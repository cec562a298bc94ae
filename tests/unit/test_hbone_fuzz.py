"""Arbitrary input never makes the HBONE core raise: it ends in events and, at worst, a GOAWAY."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztunnel_py.protocol.hbone import (
    ConnectionTerminated,
    DataReceived,
    HboneClient,
    HboneServer,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid_client_traffic() -> bytes:
    """What a well-behaved client sends: preface, settings, a CONNECT and some data."""
    client, server = HboneClient(), HboneServer()
    wire = bytearray(client.data_to_send())
    server.receive_data(wire)
    client.receive_data(server.data_to_send())
    stream_id = client.start_connect("10.0.0.1:80", [("baggage", "a=b")])
    server.receive_data(client.data_to_send())
    server.respond(stream_id, 200)
    client.receive_data(server.data_to_send())
    client.send_data(stream_id, b"payload" * 50)
    client.end_stream(stream_id)
    return bytes(wire) + client.data_to_send()


VALID = valid_client_traffic()


def feed(conn: HboneClient | HboneServer, chunks: list[bytes]) -> None:
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            if isinstance(event, DataReceived):
                conn.acknowledge_received_data(event.stream_id, len(event.data))
            if isinstance(event, ConnectionTerminated):
                assert event.reason
        # Whatever happened, the output is still well-formed bytes.
        conn.data_to_send()


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_server_survives_garbage_after_the_preface(chunks: list[bytes]) -> None:
    server = HboneServer()
    feed(server, [PREFACE, *chunks])


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_client_survives_garbage(chunks: list[bytes]) -> None:
    client = HboneClient()
    client.start_connect("10.0.0.1:80")
    feed(client, chunks)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(1, 64),
)
def test_server_survives_corrupted_valid_traffic(flips: list[tuple[int, int]], piece: int) -> None:
    wire = bytearray(VALID)
    for index, value in flips:
        wire[index] = value
    server = HboneServer()
    feed(server, [bytes(wire[i : i + piece]) for i in range(0, len(wire), piece)])
