"""The testbed pod's HTTP server on loopback: who answered, who asked, keep-alive, bad input."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from ztunnel_py.testbed.podapp import PodInfo
from ztunnel_py.testbed.podserver import PodHTTPServer

INFO = PodInfo("echo-1", "apps", "node1")


@pytest.fixture
def server() -> Iterator[PodHTTPServer]:
    srv = PodHTTPServer(("127.0.0.1", 0), INFO)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_answers_with_pod_and_peer_over_one_keepalive_connection(server: PodHTTPServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    try:
        for path in ("/", "/a/b?c=1"):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.getheader("Content-Type") == "application/json"
            assert resp.getheader("x-served-by") == "echo-1"
            body = json.loads(resp.read())
            client_port = conn.sock.getsockname()[1]
            port = server.server_address[1]
            assert body == {
                "pod": "echo-1",
                "namespace": "apps",
                "node": "node1",
                "version": "",
                "client": f"127.0.0.1:{client_port}",
                "method": "GET",
                "path": path,
                "host": f"127.0.0.1:{port}",
                "headers": {"host": f"127.0.0.1:{port}", "accept-encoding": "identity"},
                "body_bytes": 0,
                "protocol": "HTTP/1.1",
            }
    finally:
        conn.close()


def test_dual_stack_server_reports_ipv4_clients_plainly_and_brackets_ipv6() -> None:
    srv = PodHTTPServer(("::", 0), INFO)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        port = srv.server_address[1]
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            try:
                conn.request("GET", "/")
                body = json.loads(conn.getresponse().read())
                assert body["client"] == f"{shown}:{conn.sock.getsockname()[1]}"
            finally:
                conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_garbage_and_unsupported_methods_get_errors_and_the_server_lives(
    server: PodHTTPServer,
) -> None:
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert b"Error code: 400" in reply
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("BREW", "/", body=b"x")
        assert conn.getresponse().status == 501
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_port_in_use_is_a_clear_error(server: PodHTTPServer) -> None:
    port = str(server.server_address[1])
    result = subprocess.run(
        [sys.executable, "-m", "ztunnel_py.testbed.podserver", "--pod", "p", "--namespace", "n",
         "--node", "n1", "--bind", "127.0.0.1", "--port", port],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_burst_of_connections_is_accepted_without_syn_retransmissions(
    server: PodHTTPServer,
) -> None:
    # A proxy opens its upstream connections in bursts; a backlog of 5 (socketserver's default)
    # dropped SYNs, and each drop cost the caller a 1 s retransmission timeout.
    port = server.server_address[1]
    socks = [socket.socket() for _ in range(64)]
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        deadline = time.monotonic() + 0.8
        for s in socks:
            s.settimeout(max(0.0, deadline - time.monotonic()))
            s.sendall(b"GET /bytes/0 HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
