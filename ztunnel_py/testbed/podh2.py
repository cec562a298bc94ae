"""The testbed pod's HTTP/2 server: h2c with prior knowledge (no TLS, no Upgrade), for clients
such as `curl --http2-prior-knowledge` and `nghttp`, with the endpoints and answers of `podapp`.

One thread per connection reads and feeds the `h2` state machine; each request, once its stream
has ended, is answered on a thread of its own, so a `/delay` on one stream holds up no other.
Request bodies are counted and dropped, their flow-control credit returned as they arrive, so
bodies of any length get through; responses are sent within the peer's flow-control windows,
a sender waiting for a WINDOW_UPDATE (or a SETTINGS change) when a window is spent. A stream the
client resets stops being answered. `h2` raises on protocol violations and queues a GOAWAY with
the error code; the server sends it, logs the reason and closes the connection. A client that
speaks HTTP/1.1 to this port (curl without `--http2-prior-knowledge`) gets a plain-text HTTP/1.1
400 saying the port wants HTTP/2 with prior knowledge, instead of binary frames.

Locking: `_cond` guards the `h2` connection and the stream table (and is what waiting senders
wait on); `_send_lock` keeps the socket writes in the order `h2` produced them. `_send_lock` is
taken before `_cond`, never while holding it.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ztunnel_py.testbed.podapp import (
    BYTES_PREFIX,
    NO_BODY_STATUSES,
    PodInfo,
    PodListener,
    Reply,
    Request,
    answer,
    client_address,
    header_dict,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_READ_SIZE = 1 << 16
_NOT_H2_TEXT = b"this port speaks HTTP/2 with prior knowledge only (h2c, no TLS, no Upgrade)\n"
_NOT_H2 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_NOT_H2_TEXT), _NOT_H2_TEXT)
)


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    reset: bool = False


class H2Server(PodListener):
    def __init__(self, address: tuple[str, int], info: PodInfo) -> None:
        super().__init__(address, _H2Handler, info)


class _H2Handler(socketserver.BaseRequestHandler):
    server: H2Server
    request: socket.socket

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = client_address(*self.client_address[:2])
        _H2Connection(self.request, self.server.info, client).run()


class _H2Connection:
    def __init__(self, sock: socket.socket, info: PodInfo, client: str) -> None:
        self._sock = sock
        self._info = info
        self._client = client
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._closed = False

    def run(self) -> None:
        try:
            first = self._sock.recv(_READ_SIZE)
            if not PREFACE.startswith(first[: len(PREFACE)]):
                self._log(f"not HTTP/2 (starts {first[:16]!r}); answered 400")
                self._sock.sendall(_NOT_H2)
                return
            with self._cond:
                self._h2.initiate_connection()
            data = first
            while data and self._receive(data):
                self._flush()
                data = self._sock.recv(_READ_SIZE)
            self._flush()
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _receive(self, data: bytes) -> bool:
        """Feeds bytes to `h2` and acts on its events; False once the connection is over."""
        with self._cond:
            try:
                events = self._h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._log(f"protocol error, closing: {exc}")
                return False
            go_on = True
            for event in events:
                go_on = self._on_event(event) and go_on
            self._cond.notify_all()
            return go_on

    def _on_event(self, event: h2.events.Event) -> bool:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None and event.headers is not None
            self._streams[event.stream_id] = _Stream(
                [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in event.headers]
            )
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None and event.flow_controlled_length is not None
            stream = self._streams.get(event.stream_id)
            if stream is not None and event.data is not None:
                stream.body_bytes += len(event.data)
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                threading.Thread(
                    target=self._respond, args=(event.stream_id, stream), daemon=True
                ).start()
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.reset = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            return False
        return True

    def _respond(self, stream_id: int, stream: _Stream) -> None:
        try:
            request = self._request(stream)
            reply = answer(self._info, request)
            if reply.status != 200 or not request.path.startswith(BYTES_PREFIX):
                # As over HTTP/1.1, successful /bytes requests (the benchmark's) are not logged.
                self._log(f'"{request.method} {request.path} HTTP/2" {reply.status}')
            self._answer(stream_id, stream, request.method, reply)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the client reset the stream or the connection ended meanwhile
        finally:
            with self._cond:
                self._streams.pop(stream_id, None)

    def _request(self, stream: _Stream) -> Request:
        pseudo = {n: v for n, v in stream.headers if n.startswith(":")}
        fields = header_dict((n, v) for n, v in stream.headers if not n.startswith(":"))
        request = Request(
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            host=pseudo.get(":authority", fields.get("host", "")),
            headers=fields,
            body_bytes=stream.body_bytes,
            client=self._client,
            protocol="HTTP/2",
        )
        return request

    def _answer(self, stream_id: int, stream: _Stream, method: str, reply: Reply) -> None:
        def gone() -> bool:
            return self._closed or stream.reset

        body = b"" if method == "HEAD" else reply.body
        headers = [(":status", str(reply.status)), ("x-served-by", self._info.pod)]
        if reply.content_type is not None:
            headers.append(("content-type", reply.content_type))
        if reply.status not in NO_BODY_STATUSES:
            headers.append(("content-length", str(len(reply.body))))
        with self._cond:
            if reply.delay and self._cond.wait_for(gone, reply.delay):
                return
            if gone():
                return
            self._h2.send_headers(stream_id, headers, end_stream=not body)
        self._flush()
        sent = 0
        while sent < len(body):
            with self._cond:
                self._cond.wait_for(lambda: gone() or self._window(stream_id) > 0)
                if gone():
                    return
                size = min(self._window(stream_id), self._h2.max_outbound_frame_size)
                piece = bytes(body[sent : sent + size])
                sent += len(piece)
                self._h2.send_data(stream_id, piece, end_stream=sent == len(body))
            self._flush()

    def _window(self, stream_id: int) -> int:
        return self._h2.local_flow_control_window(stream_id)

    def _flush(self) -> None:
        with self._send_lock:
            with self._cond:
                data = self._h2.data_to_send()
            if not data:
                return
            try:
                self._sock.sendall(data)
            except OSError:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()

    def _log(self, message: str) -> None:
        sys.stderr.write(f"{self._client} h2c: {message}\n")
        sys.stderr.flush()
