"""The testbed pod app as a real process on loopback, driven by the clients L7 tests use: curl
over HTTP/1.1 and HTTP/2 (prior knowledge), nghttp, the grpcio client CLI and a raw socket for
the upgrade echo; and the bad input each of them can send."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from ztunnel_py.testbed import grpcclient
from ztunnel_py.testbed.podgrpc import SERVICE, STREAM, UNARY

POD = [sys.executable, "-m", "ztunnel_py.testbed.podserver"]
GRPC_CLIENT = [sys.executable, "-m", "ztunnel_py.testbed.grpcclient"]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass
class Pod:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    log: list[str] = field(default_factory=list)
    logged: threading.Condition = field(default_factory=threading.Condition)

    def url(self, what: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[what]}{path}"

    def target(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.logged:
                self.log.append(line)
                self.logged.notify_all()

    def wait_for_log(self, text: str) -> None:
        with self.logged:
            if not self.logged.wait_for(lambda: any(text in line for line in self.log), 10):
                pytest.fail(f"pod server did not log {text!r}: {self.log}")


def start_pod(
    *flags: str, expect: tuple[str, ...] = ("http", "h2c", "grpc"), bind: str = "127.0.0.1"
) -> Pod:
    process = subprocess.Popen(
        [*POD, "--pod", "echo-1", "--namespace", "apps", "--node", "node1", "--bind", bind,
         "--port", "0", *flags],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pod = Pod(process, {})
    threading.Thread(target=pod.read_log, daemon=True).start()
    for what in expect:
        shown = f"[{bind}]" if ":" in bind else bind
        pod.wait_for_log(f": {what} listening on {shown}:")
    for line in pod.log:
        what, _, address = line.partition(": ")[2].partition(" listening on ")
        if address:
            pod.ports[what] = int(address.rpartition(":")[2])
    assert set(pod.ports) == set(expect)
    return pod


def stop_pod(pod: Pod) -> None:
    pod.process.terminate()
    assert pod.process.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    started = start_pod("--version", "v2", "--h2-port", "auto", "--grpc-port", "auto")
    try:
        yield started
    finally:
        stop_pod(started)


@dataclass
class Answer:
    status: int
    version: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


def curl(tmp_path: Path, *args: str) -> Answer:
    """One curl run; the last response's status, HTTP version, headers and body."""
    head, body = tmp_path / "head", tmp_path / "body"
    # curl writes no body file for an empty body: a previous run's must not stand in for it.
    body.unlink(missing_ok=True)
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-D", str(head), "-o", str(body),
         "-w", "%{http_code} %{http_version}", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status, version = done.stdout.split()
    # With 100-continue the dump holds an interim head first; the last head is the answer's.
    last = head.read_bytes().decode().strip().split("\r\n\r\n")[-1]
    headers = {}
    for line in last.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status), version, headers, body.read_bytes() if body.exists() else b"")


def raw_exchange(port: int, data: bytes) -> bytes:
    """Sends `data` on a fresh connection and returns all the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_every_method_answers_json_naming_pod_version_and_request(pod: Pod, tmp_path: Path) -> None:
    for method in METHODS:
        answer = curl(tmp_path, "-X", method, "--data-binary", "hello", pod.url("http", "/a?b=1"))
        assert answer.status == 200
        assert answer.headers["x-served-by"] == "echo-1"
        body = answer.json()
        assert body["method"] == method
        assert (body["pod"], body["namespace"], body["node"], body["version"]) == (
            "echo-1", "apps", "node1", "v2",
        )  # fmt: skip
        assert body["path"] == "/a?b=1"
        assert body["host"] == f"127.0.0.1:{pod.ports['http']}"
        assert body["body_bytes"] == 5
        assert body["protocol"] == "HTTP/1.1"
        assert str(body["client"]).startswith("127.0.0.1:")
    # HEAD: the head GET would have, no body; the pipelined GET behind it proves no stray bytes.
    reply = raw_exchange(
        pod.ports["http"],
        b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"x-served-by: echo-1" in head
    assert b"Content-Length: 0" not in head
    assert rest.startswith(b"HTTP/1.1 200") and b'"path": "/y"' in rest


def test_status_delay_and_headers_endpoints(pod: Pod, tmp_path: Path) -> None:
    unavailable = curl(tmp_path, pod.url("http", "/status/503"))
    assert unavailable.status == 503
    assert unavailable.json()["pod"] == "echo-1"
    assert unavailable.headers["x-served-by"] == "echo-1"
    no_content = curl(tmp_path, pod.url("http", "/status/204"))
    assert (no_content.status, no_content.body) == (204, b"")
    for bad in ("/status/101", "/status/600", "/status/abc"):
        rejected = curl(tmp_path, pod.url("http", bad))
        assert rejected.status == 400
        assert b"from 200 to 599" in rejected.body

    started = time.monotonic()
    delayed = curl(tmp_path, pod.url("http", "/delay/300"))
    assert delayed.status == 200 and time.monotonic() - started >= 0.3
    started = time.monotonic()
    huge = curl(tmp_path, pod.url("http", "/delay/30001"))
    assert huge.status == 400 and b"from 0 to 30000" in huge.body
    assert time.monotonic() - started < 5

    headers = curl(
        tmp_path, "-H", "X-Trace: a", "-H", "x-trace: b", "-H", "Cookie: c=1",
        pod.url("http", "/headers"),
    ).json()["headers"]  # fmt: skip
    assert isinstance(headers, dict)
    assert headers["x-trace"] == "a, b"
    assert headers["cookie"] == "c=1"
    assert headers["user-agent"].startswith("curl/")


def test_flaky_fails_its_share_of_requests(pod: Pod, tmp_path: Path) -> None:
    assert curl(tmp_path, pod.url("http", "/flaky/0")).status == 200
    always = curl(tmp_path, pod.url("http", "/flaky/100"))
    assert always.status == 503 and always.json()["pod"] == "echo-1"
    statuses = [curl(tmp_path, pod.url("http", "/flaky/50")).status for _ in range(40)]
    assert set(statuses) == {200, 503}
    assert curl(tmp_path, pod.url("http", "/flaky/101")).status == 400


def test_bodies_of_any_length_chunked_or_not_are_read(pod: Pod, tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.write_bytes(b"z" * (3 << 20))
    for framing in ((), ("-H", "Transfer-Encoding: chunked")):
        answer = curl(tmp_path, *framing, "--data-binary", f"@{upload}", pod.url("http", "/up"))
        body = answer.json()
        assert body["body_bytes"] == 3 << 20
        sent = body["headers"]
        assert isinstance(sent, dict)
        assert ("transfer-encoding" in sent) == bool(framing)


def test_malformed_bodies_get_400_naming_the_problem_and_the_server_lives(pod: Pod) -> None:
    port = pod.ports["http"]
    head = b"POST / HTTP/1.1\r\nHost: x\r\n"
    cases = {
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n": b"bad chunk size line",
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n": b"longer than its size",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc": b"in one request",
        b"Transfer-Encoding: gzip\r\n\r\n": b"unsupported Transfer-Encoding",
        b"Content-Length: -3\r\n\r\n": b"is not one length",
    }
    for rest, reason in cases.items():
        reply = raw_exchange(port, head + rest)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
        assert reason in reply
    # A client that leaves mid-body gets no answer (nothing would read it), only a log line.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: 100\r\n\r\nonly part")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    pod.wait_for_log("client closed the request body after 9 of 100 bytes")
    assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200"
    )


def test_upgrade_requests_switch_and_echo_until_the_client_closes(pod: Pod) -> None:
    with socket.create_connection(("127.0.0.1", pod.ports["http"]), timeout=10) as sock:
        # The first payload rides with the request: bytes the server buffered are echoed too.
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly"
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        head, _, echoed = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Upgrade: websocket" in head and b"x-served-by: echo-1" in head
        payload = bytes(range(256)) * 400
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            echoed += chunk
        assert echoed == b"early" + payload


def test_http2_prior_knowledge_with_curl(pod: Pod, tmp_path: Path) -> None:
    h2 = ("--http2-prior-knowledge",)
    answer = curl(tmp_path, *h2, "-H", "x-a: 1", pod.url("h2c", "/headers"))
    assert (answer.status, answer.version) == (200, "2")
    assert answer.headers["x-served-by"] == "echo-1"
    body = answer.json()
    assert (body["protocol"], body["method"], body["version"]) == ("HTTP/2", "GET", "v2")
    assert body["host"] == f"127.0.0.1:{pod.ports['h2c']}"
    sent = body["headers"]
    assert isinstance(sent, dict)
    assert sent["x-a"] == "1" and sent["accept"] == "*/*"
    assert not any(name.startswith(":") for name in sent)  # pseudo-headers have fields of their own
    # Both directions beyond the 64 KiB initial windows: flow control has to work both ways.
    upload = tmp_path / "upload"
    upload.write_bytes(b"u" * (2 << 20))
    posted = curl(tmp_path, *h2, "--data-binary", f"@{upload}", pod.url("h2c", "/up")).json()
    assert (posted["method"], posted["body_bytes"]) == ("POST", 2 << 20)
    large = curl(tmp_path, *h2, pod.url("h2c", "/bytes/1048576"))
    assert large.body == bytes(1 << 20)
    assert curl(tmp_path, *h2, pod.url("h2c", "/status/503")).status == 503
    head = curl(tmp_path, *h2, "-I", pod.url("h2c", "/"))
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert curl(tmp_path, *h2, pod.url("h2c", "/delay/99999")).status == 400


def test_http2_streams_are_answered_concurrently_for_nghttp(pod: Pod, tmp_path: Path) -> None:
    # One connection, two streams: the delayed one must not hold up the other.
    started = time.monotonic()
    verbose = subprocess.run(
        ["nghttp", "-v", "-n", pod.url("h2c", "/delay/600"), pod.url("h2c", "/status/503")],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert time.monotonic() - started < 5
    statuses = [line.split()[-1] for line in verbose.splitlines() if ":status:" in line]
    assert statuses == ["503", "200"]
    upload = tmp_path / "upload"
    upload.write_bytes(b"n" * 300_000)
    body = subprocess.run(
        ["nghttp", "-d", str(upload), "-H", "x-from: nghttp", pod.url("h2c", "/headers")],
        capture_output=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    answer = json.loads(body)
    assert (answer["method"], answer["body_bytes"]) == ("POST", 300_000)
    assert answer["headers"]["x-from"] == "nghttp"


def test_http2_port_refuses_other_protocols_clearly(pod: Pod, tmp_path: Path) -> None:
    port = pod.ports["h2c"]
    plain = curl(tmp_path, pod.url("h2c", "/"))
    assert plain.status == 400 and b"HTTP/2 with prior knowledge" in plain.body
    # A valid preface, then a DATA frame on stream 0: a connection error. The server answers
    # its SETTINGS and a GOAWAY (frame type 7) with PROTOCOL_ERROR (1), then closes.
    bad_frame = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
    reply = raw_exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bad_frame)
    goaway = reply[reply.index(b"\x07\x00\x00\x00\x00\x00") - 3 :]
    assert int.from_bytes(goaway[13:17]) == 1
    pod.wait_for_log("protocol error, closing")
    assert curl(tmp_path, "--http2-prior-knowledge", pod.url("h2c", "/")).status == 200


def grpc_cli(pod: Pod, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GRPC_CLIENT, "--target", pod.target(), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_grpc_unary_echoes_request_and_metadata(pod: Pod) -> None:
    done = grpc_cli(
        pod, "unary", "--request", '{"hello": [1, 2]}', "--metadata", "x-user=ann",
        "--metadata", "X-User=bob",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    answer = json.loads(line)
    assert (answer["pod"], answer["namespace"], answer["version"]) == ("echo-1", "apps", "v2")
    assert answer["request"] == {"hello": [1, 2]}
    assert answer["metadata"]["x-user"] == "ann, bob"
    assert answer["client"].startswith("127.0.0.1:")


def test_grpc_server_stream_sends_count_messages_as_they_are_produced(pod: Pod) -> None:
    done = grpc_cli(pod, "stream", "--count", "5")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["index"] for line in done.stdout.splitlines()] == [0, 1, 2, 3, 4]
    assert grpc_cli(pod, "stream", "--count", "0").stdout == ""
    arrivals = []
    started = time.monotonic()
    for _ in grpcclient.call(pod.target(), STREAM, {"count": 3, "interval_ms": 400}):
        arrivals.append(time.monotonic() - started)
    # The first message is out long before the last is produced: the server streams.
    assert arrivals[2] - arrivals[0] >= 0.75


def test_grpc_requested_status_fails_the_call_with_it(pod: Pod) -> None:
    for method, code in (("unary", 14), ("stream", 7)):
        done = grpc_cli(pod, method, "--request", json.dumps({"status": code}))
        assert done.returncode == code
        failure = json.loads(done.stderr.strip().splitlines()[-1])
        assert failure["status"] == code
        assert failure["details"] == f"status {code} requested"
    assert grpc_cli(pod, "unary", "--request", '{"status": 0}').returncode == 0


def test_grpc_bad_requests_get_invalid_argument_and_the_server_lives(pod: Pod) -> None:
    with grpc.insecure_channel(pod.target()) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/{UNARY}", None, None)
        for message, reason in (
            (b"not json", "not UTF-8 JSON"),
            (b"\xff\xfe", "not UTF-8 JSON"),
            (b"[1]", "must be a JSON object"),
            (b'{"status": 17}', "status must be a gRPC status code"),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                unary(message, timeout=10)
            error = failed.value
            assert isinstance(error, grpc.Call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in str(error.details())
    too_many = grpc_cli(pod, "stream", "--count", "1001")
    assert too_many.returncode == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "count must be an integer from 0 to 1000" in too_many.stderr
    too_long = grpc_cli(pod, "stream", "--count", "100", "--interval-ms", "1000")
    assert "at most 30000 ms" in too_long.stderr
    assert grpc_cli(pod, "unary").returncode == 0


def test_grpc_client_reports_an_absent_server_as_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        done = subprocess.run(
            [*GRPC_CLIENT, "--target", f"127.0.0.1:{port}", "--timeout", "5", "unary"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert done.returncode == grpc.StatusCode.UNAVAILABLE.value[0]
    assert json.loads(done.stderr.strip().splitlines()[-1])["code"] == "UNAVAILABLE"


def test_disabled_ports_listen_nowhere_and_load_no_grpc() -> None:
    pod = start_pod("--h2-port", "0", "--grpc-port", "0", expect=("http",))
    try:
        modules = subprocess.run(
            ["cat", f"/proc/{pod.process.pid}/maps"], capture_output=True, text=True, check=True
        ).stdout
        assert "cygrpc" not in modules
    finally:
        stop_pod(pod)
    assert not any(" listening on " in line and "http" not in line for line in pod.log)


def test_grpc_client_sets_the_authority_a_proxy_routes_on() -> None:
    # A bare HTTP/2 server stands in for the proxy: all it needs is the request's headers.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        client = subprocess.Popen(
            [*GRPC_CLIENT, "--target", f"127.0.0.1:{listener.getsockname()[1]}",
             "--authority", "echo.apps.svc:9090", "--timeout", "10", "unary"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(10)
                server = h2.connection.H2Connection(
                    h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
                )
                server.initiate_connection()
                headers: dict[str, str] = {}
                while not headers:
                    sock.sendall(server.data_to_send())
                    data = sock.recv(65536)
                    assert data
                    for event in server.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            assert event.headers is not None
                            headers = {str(n): str(v) for n, v in event.headers}
        finally:
            assert client.wait(timeout=20) != 0  # nobody answered the call
    assert headers[":authority"] == "echo.apps.svc:9090"
    assert headers[":path"] == f"/{SERVICE}/{UNARY}"


def test_dual_stack_pod_serves_h2_and_grpc_on_both_families(tmp_path: Path) -> None:
    pod = start_pod("--h2-port", "auto", "--grpc-port", "auto", bind="::")
    try:
        for host in ("127.0.0.1", "::1"):
            url_host = f"[{host}]" if ":" in host else host
            answer = curl(
                tmp_path, "--http2-prior-knowledge", f"http://{url_host}:{pod.ports['h2c']}/"
            )
            assert str(answer.json()["client"]).rpartition(":")[0].strip("[]") == host
            (reply,) = grpcclient.call(f"{url_host}:{pod.ports['grpc']}", UNARY, {})
            assert str(reply["client"]).rpartition(":")[0].strip("[]") == host
    finally:
        stop_pod(pod)


def test_http2_stream_reset_during_a_delay_is_not_answered(pod: Pod) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    for stream_id, path in ((1, "/delay/800"), (3, "/headers")):
        request = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
        client.send_headers(stream_id, request, end_stream=True)
    client.reset_stream(1)
    received = b""
    with socket.create_connection(("127.0.0.1", pod.ports["h2c"]), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        # Read past the moment the delayed answer would have gone out.
        deadline = time.monotonic() + 1.5
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            assert chunk
            received += chunk
    frames = []  # (type, stream id) of each frame: 9-byte heads, length in the first 3 bytes
    while received:
        length = int.from_bytes(received[:3])
        frames.append((received[3], int.from_bytes(received[5:9]) & 0x7FFFFFFF))
        received = received[9 + length :]
    headers, data = 1, 0
    assert (headers, 3) in frames and (data, 3) in frames
    assert (headers, 1) not in frames and (data, 1) not in frames
