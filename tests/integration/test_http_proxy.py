"""The HTTP engine on real loopback sockets: `serve_http` + `HttpProxy` in-process, upstream
servers built on h11 and h2, real clients (curl over HTTP/1.1 and HTTP/2 prior knowledge,
nghttp, raw sockets)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.integration.http_support import (
    H1_SERVICE,
    H2_SERVICE,
    H1Upstream,
    H2Upstream,
    MiB,
    ProxyUnderTest,
    StaticResolver,
    front_proxy,
    listen_tcp,
    pattern,
    run,
    run_proxy,
)
from ztunnel_py.model.http import (
    Backend,
    DirectResponse,
    HeaderOps,
    MatchKind,
    PathMatch,
    Redirect,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
)
from ztunnel_py.testbed.podapp import PodInfo
from ztunnel_py.testbed.podserver import PodHTTPServer

pytestmark = pytest.mark.timeout(60)

H1 = H1_SERVICE
H2 = H2_SERVICE


def to(service: str, **kw: object) -> Route:
    return Route(f"to-{service}", backends=(Backend(service, 80),), **kw)  # type: ignore[arg-type]


async def curl(*args: str, http2: bool = False, limit: float = 20.0) -> tuple[int, bytes, bytes]:
    """curl's exit code, stdout and stderr (verbose)."""
    version = "--http2-prior-knowledge" if http2 else "--http1.1"
    proc = await run("curl", "-sS", "-v", "--max-time", "15", version, *args, limit=limit)
    return proc.returncode, proc.stdout, proc.stderr


def status_of(stderr: bytes) -> list[int]:
    """Every final response status curl reported, in order."""
    out = []
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("< HTTP/"):
            code = int(line.split()[2])
            if code >= 200:
                out.append(code)
    return out


@pytest.fixture
async def h1(nursery: trio.Nursery) -> H1Upstream:
    return await H1Upstream().serve(nursery)


@pytest.fixture
async def h2up(nursery: trio.Nursery) -> H2Upstream:
    return await H2Upstream().serve(nursery)


@pytest.fixture
async def proxy(h1: H1Upstream, h2up: H2Upstream) -> AsyncIterator[ProxyUnderTest]:
    async with front_proxy(h1, h2up) as put:
        yield put


@pytest.mark.parametrize("http2", [False, True])
async def test_get_through_the_proxy_reuses_the_upstream_connection(
    proxy: ProxyUnderTest, h1: H1Upstream, h2up: H2Upstream, http2: bool
) -> None:
    urls = [f"{proxy.url}/echo/{i}?q={i}" for i in range(3)]
    h2urls = [f"{proxy.url}/h2/echo/{i}" for i in range(3)]
    # HTTP/2 has no Connection header (curl refuses to send one)
    hop = [] if http2 else ["-H", "Connection: keep-alive, x-drop"]
    args = ["-H", "X-Custom: yes", *hop, "-H", "X-Drop: 1"]
    if http2:
        # curl 7.88 fails to reuse a prior-knowledge connection (curl issue 10634): one
        # connection per request; the upstream pool is what is reused
        code, out, err = 0, b"", b""
        for url in urls + h2urls:
            c, o, e = await curl(*args, url, http2=True)
            code, out, err = code or c, out + o, err + e
    else:
        code, out, err = await curl(*args, *urls, *h2urls)
    assert code == 0, err
    assert status_of(err) == [200] * 6
    bodies = [json.loads(b) for b in out.replace(b"}{", b"}\n{").splitlines()]
    assert [b["path"] for b in bodies] == [f"/echo/{i}?q={i}" for i in range(3)] + [
        f"/echo/{i}" for i in range(3)
    ]
    first = bodies[0]["headers"]
    assert first["x-custom"] == "yes" and first["x-forwarded-proto"] == "http"
    assert first["host"] == f"127.0.0.1:{proxy.port}"
    # hop-by-hop fields, and those the client named in Connection, stop at the proxy
    assert "connection" not in first
    assert ("x-drop" in first) is http2
    assert bodies[3]["headers"][":authority"] == f"127.0.0.1:{proxy.port}"
    # one upstream connection each, reused for every request
    assert (h1.connections, h2up.connections) == (1, 1)
    logs = await proxy.log.wait_for(6)
    assert [c.response.status for c in logs if c.response] == [200] * 6
    assert [(c.flags_text, c.attempts) for c in logs] == [("-", 1)] * 6, [
        (c.request.path, c.flags_text, c.details, c.response_body_bytes) for c in logs
    ]


async def test_nghttp_to_an_http2_upstream(proxy: ProxyUnderTest, h2up: H2Upstream) -> None:
    proc = await run("nghttp", "-v", "-n", f"{proxy.url}/h2/bytes/100000", f"{proxy.url}/h2/echo")
    text = proc.stdout.decode()
    assert proc.returncode == 0, text + proc.stderr.decode()
    assert text.count(":status: 200") == 2
    # the upstream's trailers came through
    assert "x-sha256: " + hashlib.sha256(pattern(100000)).hexdigest() in text
    assert "recv GOAWAY" not in text or "error_code=NO_ERROR" in text


@pytest.mark.parametrize(
    ("http2", "prefix"), [(False, ""), (True, ""), (False, "/h2"), (True, "/h2")]
)
async def test_large_bodies_both_ways(
    proxy: ProxyUnderTest, tmp_path: Path, http2: bool, prefix: str
) -> None:
    size = 6 * MiB + 123
    upload = tmp_path / "up.bin"
    upload.write_bytes(pattern(size))
    code, out, err = await curl(
        "--data-binary",
        f"@{upload}",
        "-H",
        "Content-Type: application/octet-stream",
        f"{proxy.url}{prefix}/echo",
        http2=http2,
    )
    assert code == 0, err
    echo = json.loads(out)
    assert echo["body_len"] == size
    assert echo["sha256"] == hashlib.sha256(pattern(size)).hexdigest()
    code, out, err = await curl(f"{proxy.url}{prefix}/bytes/{size}", http2=http2)
    assert code == 0, err
    assert len(out) == size and out == pattern(size)


async def test_local_replies_as_envoy(nursery: trio.Nursery, h1: H1Upstream) -> None:
    routes = [
        to(H1, matches=(RouteMatch(path=PathMatch(MatchKind.EXACT, "/ok")),)),
        to("test/empty", matches=(RouteMatch(path=PathMatch(MatchKind.EXACT, "/empty")),)),
        Route(
            "direct",
            matches=(RouteMatch(path=PathMatch(MatchKind.EXACT, "/direct")),),
            direct_response=DirectResponse(418, "short and stout"),
        ),
        Route(
            "redirect",
            matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, "/old")),),
            redirect=Redirect(status=301, prefix="/new", host="example.org"),
        ),
        Route(
            "weightless",
            matches=(RouteMatch(path=PathMatch(MatchKind.EXACT, "/zero")),),
            backends=(Backend(H1, 80, weight=0),),
        ),
        # a backendRef the control plane could not resolve
        Route(
            "unresolved",
            matches=(RouteMatch(path=PathMatch(MatchKind.EXACT, "/gone")),),
            backends=(Backend("test/", 80),),
        ),
    ]
    async with run_proxy(StaticResolver(routes, {H1: [(h1.address, False)]})) as proxy:
        cases = [
            ("/nothing", 404, b"", "NR"),
            ("/empty", 503, b"no healthy upstream", "UH"),
            ("/direct", 418, b"short and stout", "-"),
            ("/old/x?y=1", 301, b"", "-"),
            ("/zero", 500, b"", "-"),
            ("/gone", 500, b"", "-"),
        ]
        for path, status, body, _flags in cases:
            code, out, err = await curl(f"{proxy.url}{path}")
            assert code == 0, err
            assert status_of(err) == [status], (path, err)
            assert out == body, path
            if status == 301:
                # the host replaced, the port of the listener kept (Gateway API)
                location = f"< location: http://example.org:{proxy.port}/new/x?y=1"
                assert location.encode() in err.lower()
        logs = await proxy.log.wait_for(len(cases))
        assert [c.flags_text for c in logs] == [f for *_, f in cases]
        assert logs[0].details == "route_not_found"
        assert logs[1].details == "no_healthy_upstream"
    assert h1.requests == []


async def test_route_header_operations(nursery: trio.Nursery, h1: H1Upstream) -> None:
    route = Route(
        "ops",
        backends=(Backend(H1, 80, request_headers=HeaderOps(add=(("x-backend", "b"),))),),
        request_headers=HeaderOps(set=(("x-set", "s"),), remove=("x-gone",)),
        response_headers=HeaderOps(add=(("x-resp", "r"),)),
    )
    async with run_proxy(StaticResolver([route], {H1: [(h1.address, False)]})) as proxy:
        code, out, err = await curl("-H", "x-gone: 1", "-H", "x-set: old", f"{proxy.url}/echo")
        assert code == 0, err
        seen = json.loads(out)["headers"]
        assert seen["x-set"] == "s" and seen["x-backend"] == "b" and "x-gone" not in seen
        assert b"< x-resp: r" in err


async def test_retries_on_503_with_the_default_policy(
    nursery: trio.Nursery, h1: H1Upstream
) -> None:
    async with run_proxy(
        StaticResolver([to(H1)], {H1: [(h1.address, False)]}), rand=lambda: 0.0
    ) as proxy:
        h1.fail_next = 1
        code, out, err = await curl(f"{proxy.url}/flaky")
        assert code == 0 and out == b"finally", err
        # attempts run out: the last 503 goes to the client as it came
        h1.fail_next = 5
        code, out, err = await curl(f"{proxy.url}/flaky")
        assert status_of(err) == [503] and out == b"try again"
        logs = await proxy.log.wait_for(2)
        assert (logs[0].attempts, logs[0].flags_text) == (2, "-")
        assert (logs[1].attempts, logs[1].flags_text) == (3, "URX")
        assert len(h1.requests) == 5
        # the 503 answers were read or dropped: the connection is still reused
        assert h1.connections == 1


async def test_no_retry_of_a_body_larger_than_the_retry_buffer(
    nursery: trio.Nursery, h1: H1Upstream, tmp_path: Path
) -> None:
    async with run_proxy(
        StaticResolver([to(H1)], {H1: [(h1.address, False)]}), rand=lambda: 0.0
    ) as proxy:
        body = tmp_path / "body"
        for size, requests, status in ((512 * 1024, 2, 200), (2 * MiB, 1, 503)):
            h1.requests.clear()
            h1.fail_next = 1
            body.write_bytes(pattern(size))
            _code, _out, err = await curl("--data-binary", f"@{body}", f"{proxy.url}/flaky")
            assert status_of(err) == [status], err
            assert len(h1.requests) == requests


async def test_connect_failure_then_a_live_endpoint(nursery: trio.Nursery, h1: H1Upstream) -> None:
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: connection refused
    endpoints = {
        H1: [(dead_address, False), (h1.address, False)],
        "test/dead": [(dead_address, False)],
    }
    routes = [
        to("test/dead", matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, "/dead")),)),
        to(H1),
    ]
    async with run_proxy(StaticResolver(routes, endpoints), rand=lambda: 0.0) as proxy:
        code, out, err = await curl(f"{proxy.url}/echo")
        assert code == 0 and status_of(err) == [200], err
        code, out, err = await curl(f"{proxy.url}/dead")
        assert status_of(err) == [503]
        assert out == (
            b"upstream connect error or disconnect/reset before headers. "
            b"reset reason: connection failure"
        )
        logs = await proxy.log.wait_for(2)
        assert (logs[0].attempts, logs[0].upstream_host) == (2, h1.address)
        assert logs[1].attempts == 3 and set(logs[1].response_flags) == {"UF", "URX"}


@pytest.mark.parametrize("prefix", ["", "/h2"])
async def test_route_timeout_is_504(
    nursery: trio.Nursery, h1: H1Upstream, h2up: H2Upstream, prefix: str
) -> None:
    routes = [
        to(
            H2,
            matches=(RouteMatch(path=PathMatch(MatchKind.PREFIX, "/h2")),),
            rewrite=Rewrite(prefix="/"),
            timeout=0.3,
        ),
        to(H1, timeout=0.3),
    ]
    resolver = StaticResolver(routes, {H1: [(h1.address, False)], H2: [(h2up.address, True)]})
    async with run_proxy(resolver) as proxy:
        start = trio.current_time()
        code, out, err = await curl(f"{proxy.url}{prefix}/delay/3000")
        assert status_of(err) == [504] and out == b"upstream request timeout", err
        assert trio.current_time() - start < 2.5
        logs = await proxy.log.wait_for(1)
        assert logs[0].flags_text == "UT" and logs[0].details == "upstream_response_timeout"
        # the abandoned upstream exchange does not poison the pool
        code, out, err = await curl(f"{proxy.url}{prefix}/echo")
        assert code == 0 and status_of(err) == [200], err


async def test_per_try_timeout_retries_then_504(nursery: trio.Nursery, h1: H1Upstream) -> None:
    policy = RetryPolicy(attempts=2, per_try_timeout=0.2, retry_on=("5xx",))
    async with run_proxy(
        StaticResolver([to(H1, retries=policy)], {H1: [(h1.address, False)]}), rand=lambda: 0.0
    ) as proxy:
        _code, out, err = await curl(f"{proxy.url}/delay/2000")
        assert status_of(err) == [504] and out == b"upstream request timeout", err
        logs = await proxy.log.wait_for(1)
        assert logs[0].attempts == 3 and set(logs[0].response_flags) == {"UT", "URX"}
        assert len(h1.requests) == 3


@pytest.mark.parametrize(
    ("prefix", "reason", "flag"),
    [("", "connection termination", "UC"), ("/h2", "remote reset", "UR")],
)
async def test_upstream_reset_before_headers_is_503(
    proxy: ProxyUnderTest, prefix: str, reason: str, flag: str
) -> None:
    _code, out, err = await curl(f"{proxy.url}{prefix}/reset-before")
    assert status_of(err) == [503], err
    assert out == (
        b"upstream connect error or disconnect/reset before headers. reset reason: "
        + reason.encode()
    )
    logs = await proxy.log.wait_for(1)
    assert flag in logs[0].response_flags


@pytest.mark.parametrize(
    ("http2", "prefix"), [(False, ""), (True, ""), (False, "/h2"), (True, "/h2")]
)
async def test_upstream_reset_mid_body_resets_the_client(
    proxy: ProxyUnderTest, http2: bool, prefix: str
) -> None:
    code, out, err = await curl(f"{proxy.url}{prefix}/reset-mid", http2=http2)
    # a cut body must never look complete: curl reports a transfer error
    assert code != 0, err
    assert len(out) < 10 * MiB
    if not http2:
        # (over HTTP/2 curl may drop what it had of a stream reset in the same read)
        assert status_of(err) == [200] and len(out) > 0
    logs = await proxy.log.wait_for(1)
    assert logs[0].response is not None and logs[0].response.status == 200
    # the upstream's doing, not the client's
    assert logs[0].response_flags == ["UR"]
    assert logs[0].details.startswith("upstream_reset_after_response_started")


async def test_refused_streams_are_retried_then_503(
    nursery: trio.Nursery, h2up: H2Upstream
) -> None:
    async with run_proxy(
        StaticResolver([to(H2)], {H2: [(h2up.address, True)]}), rand=lambda: 0.0
    ) as proxy:
        _code, out, err = await curl(f"{proxy.url}/refuse")
        assert status_of(err) == [503], err
        assert out.endswith(b"reset reason: remote refused stream reset")
        logs = await proxy.log.wait_for(1)
        assert logs[0].attempts == 3 and set(logs[0].response_flags) == {"UR", "URX"}
        # refused streams do not cost the connection
        assert h2up.connections == 1 and proxy.pool.connection_count == 1


@pytest.mark.parametrize(
    ("http2", "prefix"), [(False, ""), (True, ""), (False, "/h2"), (True, "/h2")]
)
async def test_head_and_bodiless_statuses(proxy: ProxyUnderTest, http2: bool, prefix: str) -> None:
    code, out, err = await curl("-I", f"{proxy.url}{prefix}/bytes/5000", http2=http2)
    assert code == 0 and status_of(err) == [200], err
    code, out, err = await curl(f"{proxy.url}{prefix}/status/204", http2=http2)
    assert code == 0 and status_of(err) == [204] and out == b"", err
    code, out, err = await curl(f"{proxy.url}{prefix}/status/304", http2=http2)
    assert code == 0 and status_of(err) == [304] and out == b"", err
    logs = await proxy.log.wait_for(3)
    assert [c.flags_text for c in logs] == ["-"] * 3


async def test_route_timeout_runs_from_the_end_of_the_request(
    nursery: trio.Nursery, h1: H1Upstream, tmp_path: Path
) -> None:
    """A slow upload is not cut by the route timeout: Envoy starts it once the request is
    complete."""
    async with run_proxy(
        StaticResolver([to(H1, timeout=0.5)], {H1: [(h1.address, False)]})
    ) as proxy:
        body = tmp_path / "body"
        body.write_bytes(pattern(300 * 1024))
        start = trio.current_time()
        code, out, err = await curl(
            "--limit-rate", "200K", "--data-binary", f"@{body}", f"{proxy.url}/echo"
        )
        assert code == 0 and status_of(err) == [200], err
        assert trio.current_time() - start > 1.0
        assert json.loads(out)["body_len"] == 300 * 1024


async def test_a_request_body_streams_to_the_upstream_as_it_arrives(nursery: trio.Nursery) -> None:
    """The upstream gets the body's first chunk while the client has not sent the rest (it
    sends the rest only once the upstream has it): nothing waits for the whole body, with the
    default retry policy too (its copy of the body is kept as the body passes)."""
    first_seen = trio.Event()
    received = bytearray()

    async def upstream(stream: trio.SocketStream) -> None:
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower(), head
        chunks = bytearray(body)
        while b"first" not in chunks:
            chunks += await stream.receive_some(65536)
        first_seen.set()
        while not chunks.endswith(b"0\r\n\r\n"):
            chunks += await stream.receive_some(65536)
        received.extend(chunks)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    port = await listen_tcp(nursery, upstream)
    service = "test/raw"
    async with run_proxy(
        StaticResolver([to(service)], {service: [(f"127.0.0.1:{port}", False)]})
    ) as proxy:
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await client.send_all(
            b"POST /upload HTTP/1.1\r\nhost: raw\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nfirst\r\n"
        )
        with trio.fail_after(5):
            await first_seen.wait()
        await client.send_all(b"4\r\nrest\r\n0\r\n\r\n")
        answer = bytearray()
        with trio.fail_after(5):
            while not answer.endswith(b"ok"):
                answer += await client.receive_some(65536)
        await client.aclose()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"first" in received and b"rest" in received


async def test_the_testbed_pod_app_behind_the_proxy(nursery: trio.Nursery) -> None:
    """The app every testbed pod runs, in a thread: over both client protocols, one pooled
    upstream connection, and the pod sees the proxy as its client."""
    pod = PodHTTPServer(("127.0.0.1", 0), PodInfo("echo-1", "apps", "node1"))
    thread = threading.Thread(target=pod.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{pod.server_address[1]}"
        async with run_proxy(
            StaticResolver([to("apps/echo")], {"apps/echo": [(address, False)]})
        ) as proxy:
            answers = []
            for http2 in (False, True, False):
                code, out, err = await curl(f"{proxy.url}/hello?x=1", http2=http2)
                assert code == 0, err
                answers.append(json.loads(out))
            code, out, err = await curl(f"{proxy.url}/bytes/65536", http2=True)
            assert code == 0 and out == bytes(65536), err
        assert {a["pod"] for a in answers} == {"echo-1"}
        assert {a["path"] for a in answers} == {"/hello?x=1"}
        # one upstream connection from the proxy served all four requests
        assert len({a["client"] for a in answers}) == 1
    finally:
        pod.shutdown()
        pod.server_close()
        thread.join(5)
