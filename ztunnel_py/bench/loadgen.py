"""The HTTP/1.1 load generator of `ztunnel-py bench compare`: latency under load, connection rate.

The bench runs it inside a client pod's network namespace
(`ip netns exec POD python -m ztunnel_py.bench.loadgen ...`) and parses the one JSON object it
prints on stdout; progress and errors go to stderr. Two measurements:

- `latency`: Istio's method, open loop. Request i is due at t0 + i/rate and goes on keep-alive
  connection i % connections; each connection sends its requests in order and never before they
  are due. With several targets, connection k goes to target k % targets (the way a service
  VIP's connections spread over its endpoints, for a baseline without the VIP). Latency runs
  from the DUE time to the last byte of the response, so a request that waits behind a slow one
  counts its wait (no coordinated omission). The first `warmup` seconds are sent but not
  counted. Percentiles are nearest-rank values of the sorted sample.
- `connections`: a new TCP connection per request (connect, one `Connection: close` GET, read the
  whole response, close) from `concurrency` workers: the pod-to-pod connection setup rate.

Lean on purpose, since it shares the CPUs with the servers and proxies it measures: non-blocking
sockets with TCP_NODELAY driven by trio's readiness waits, pre-encoded requests, one receive
buffer per connection, and a small response parser (`parse_response_head`, sans-IO) that needs
Content-Length. Trio's own sleeps wake on epoll's whole milliseconds (rounded up), which would
add ~0.5 ms to every sample, so each connection waits for its due time on a timerfd (nanosecond
resolution, CLOCK_MONOTONIC; all times here are read from that clock). Every run is bounded:
per-request timeout, a hard deadline, a bounded sample, and reconnects spaced by a growing
backoff.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import math
import os
import socket
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import trio

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.transport.backoff import Backoff

REQUEST_TIMEOUT = 5.0
LATE_SEND = 0.001
MAX_REQUESTS = 1_000_000
MAX_HEAD = 16 * 1024
MAX_CONTENT_LENGTH = 64 * 1024 * 1024
RECV_BUFFER = 64 * 1024
BACKOFF_MIN = 0.01
BACKOFF_MAX = 0.5
PROGRESS_EVERY = 5.0
_CRLFCRLF = b"\r\n\r\n"


class ResponseError(Exception):
    """The peer's bytes are not an HTTP/1.x response this generator can read."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    head_length: int
    """Bytes from the start of the response through its blank line."""
    content_length: int
    keep_alive: bool

    @property
    def total_length(self) -> int:
        return self.head_length + self.content_length


def parse_response_head(data: bytes | bytearray, end: int | None = None) -> ResponseHead | None:
    """The head of the HTTP/1.x response at the start of `data[:end]`, or None until its blank
    line has arrived. Raises ResponseError when it is malformed, too long, or has no
    Content-Length (chunked and read-until-close bodies are not supported)."""
    end = len(data) if end is None else end
    blank = data.find(_CRLFCRLF, 0, min(end, MAX_HEAD))
    if blank < 0:
        if end >= MAX_HEAD:
            raise ResponseError(f"no end of the response head within {MAX_HEAD} bytes")
        return None
    lines = bytes(memoryview(data)[:blank]).split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        raise ResponseError("malformed status line")
    status = int(code)
    if status < 200:
        # Never asked for: no Expect or Upgrade is sent.
        raise ResponseError(f"interim response {status} (not supported)")
    keep_alive = version == b"HTTP/1.1"
    content_length: int | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ResponseError("malformed header line")
        name = name.lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit() or len(value) > 12:
                raise ResponseError("malformed Content-Length")
            if content_length is not None and content_length != int(value):
                raise ResponseError("conflicting Content-Length headers")
            content_length = int(value)
        elif name == b"transfer-encoding":
            raise ResponseError(
                "Transfer-Encoding responses are not supported (need Content-Length)"
            )
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
    if status in (204, 304):
        content_length = 0
    if content_length is None:
        raise ResponseError("response without Content-Length (not supported)")
    if content_length > MAX_CONTENT_LENGTH:
        raise ResponseError(f"Content-Length over {MAX_CONTENT_LENGTH} bytes")
    return ResponseHead(status, blank + 4, content_length, keep_alive)


def _check_path(path: str) -> None:
    if not path.startswith("/") or not path.isascii() or not all(33 <= ord(c) < 127 for c in path):
        raise ValueError(f"path {path!r} must start with / and hold visible ASCII only")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low:g} to {high:g}, got {value:g}")


def _request(target: SocketAddr, path: str, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {target}\r\n"
        f"User-Agent: ztunnel-py-loadgen\r\n{connection}\r\n"
    ).encode("ascii")


def _now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
]
_TFD_TIMER_ABSTIME = 1


def _libc_check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class _Timer:
    """A one-shot timerfd on CLOCK_MONOTONIC (timerfd_create arrives in os only in 3.13)."""

    def __init__(self) -> None:
        flags = os.O_NONBLOCK | os.O_CLOEXEC
        self._fd = _libc_check(_libc.timerfd_create(time.CLOCK_MONOTONIC, flags))
        self._spec = _Itimerspec()

    async def sleep_until(self, when: float) -> None:
        # Re-arming resets the expiry count, so an expiry left over from a cancelled wait
        # cannot wake this one early.
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(math.ceil(when * 1e9), 1_000_000_000)
        _libc_check(_libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec, None))
        await trio.lowlevel.wait_readable(self._fd)
        os.read(self._fd, 8)

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._fd)
        os.close(self._fd)


async def _connect(target: SocketAddr) -> socket.socket:
    family = socket.AF_INET6 if target.ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((str(target.ip), target.port))
        if err == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        _close(sock)
        raise
    return sock


def _close(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def _exchange(sock: socket.socket, request: bytes, buf: bytearray) -> ResponseHead:
    """Send one request and read its whole response into (and over) `buf`. Each step waits for
    readiness before its syscall: trio.socket's try-first calls would cost an extra pass of the
    scheduler per send and a BlockingIOError per receive."""
    sent = 0
    while sent < len(request):
        try:
            sent += sock.send(request[sent:] if sent else request)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
    view = memoryview(buf)
    filled = 0
    head = None
    while head is None:
        await trio.lowlevel.wait_readable(sock)
        n = sock.recv_into(view[filled:])
        if n == 0:
            raise ResponseError("connection closed before the response head was complete")
        filled += n
        head = parse_response_head(buf, filled)
    total = head.total_length
    if filled > total:
        raise ResponseError("more bytes than the response's Content-Length")
    while filled < total:
        await trio.lowlevel.wait_readable(sock)
        n = sock.recv_into(buf, min(len(buf), total - filled))
        if n == 0:
            raise ResponseError("connection closed before the response body was complete")
        filled += n
    return head


def _reason(phase: str, exc: BaseException, timeout: float) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"{phase}: timed out after {timeout:g} s"
    if isinstance(exc, ResponseError):
        return f"{phase}: bad response: {exc}"
    if isinstance(exc, OSError) and exc.errno:
        return f"{phase}: {os.strerror(exc.errno).lower()}"
    return f"{phase}: {type(exc).__name__}"


def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class LatencyReport:
    requests: int
    """Counted requests answered with a 2xx (the sample the percentiles come from)."""
    errors: int
    """Counted requests that failed or were not answered before the deadline."""
    achieved_rps: float
    late_sends: int
    """Counted requests sent more than 1 ms after they were due (a busy connection or CPU)."""
    sent: int
    """Requests written to a connection, warm-up included: what a proxy on the path saw."""
    answered: int
    """Responses read in full (any status), warm-up included."""
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    duration_s: float
    """From the first counted due time to the last counted response."""
    errors_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class ConnectionReport:
    connections: int
    """Connections that completed one 2xx request and closed."""
    errors: int
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    duration_s: float
    errors_by_reason: dict[str, int] = field(default_factory=dict)


class _Errors:
    """Error counts by reason; the first of each reason is reported as it happens."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.by_reason: dict[str, int] = {}
        self._progress = progress

    def add(self, reason: str, count: int = 1) -> None:
        seen = self.by_reason.get(reason, 0)
        self.by_reason[reason] = seen + count
        if not seen and self._progress:
            self._progress(f"error: {reason} (further ones are counted, not printed)")

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class _LatencyRun:
    def __init__(
        self,
        targets: Sequence[SocketAddr],
        path: str,
        rate: int,
        connections: int,
        duration: float,
        warmup: float,
        timeout: float,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.targets = targets
        self.timeout = timeout
        self.requests = [_request(target, path, close=False) for target in targets]
        self.rate = rate
        self.connections = connections
        self.warm = round(warmup * rate)
        self.counted = round(duration * rate)
        self.total = self.warm + self.counted
        self.samples = array("d")
        self.errors = _Errors(progress)
        self.late = 0
        self.sent = 0
        self.answered = 0
        self.last_done = 0.0
        self.t0 = 0.0

    def target(self, k: int) -> SocketAddr:
        return self.targets[k % len(self.targets)]

    async def open(self, slot: list[socket.socket | None], k: int) -> None:
        try:
            with trio.fail_after(self.timeout):
                slot[k] = await _connect(self.target(k))
        except (OSError, trio.TooSlowError):
            slot[k] = None  # The worker retries at its first request and counts the failure.

    async def worker(self, k: int, sock: socket.socket | None) -> None:
        timer = _Timer()
        target, request = self.target(k), self.requests[k % len(self.targets)]
        buf = bytearray(RECV_BUFFER)
        retry_at = 0.0
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        down_reason = ""
        try:
            for i in range(k, self.total, self.connections):
                due = self.t0 + i / self.rate
                counted = i >= self.warm
                if sock is None and due < retry_at:
                    # The connection is down until retry_at: this request cannot be sent.
                    if counted:
                        self.errors.add(down_reason)
                    continue
                if _now() < due:
                    await timer.sleep_until(due)
                sent = _now()
                phase = "request"
                try:
                    with trio.fail_after(self.timeout):
                        if sock is None:
                            phase = "connect"
                            sock = await _connect(target)
                            phase = "request"
                            sent = _now()
                        self.sent += 1
                        head = await _exchange(sock, request, buf)
                except (OSError, ResponseError, trio.TooSlowError) as exc:
                    down_reason = _reason(phase, exc, self.timeout)
                    if counted:
                        self.errors.add(down_reason)
                    if sock is not None:
                        _close(sock)
                        sock = None
                    retry_at = _now() + backoff.next_delay()
                    continue
                done = _now()
                self.answered += 1
                backoff.reset()
                if counted:
                    if sent - due > LATE_SEND:
                        self.late += 1
                    if 200 <= head.status < 300:
                        self.samples.append(done - due)
                        self.last_done = max(self.last_done, done)
                    else:
                        self.errors.add(f"HTTP status {head.status}")
                if not head.keep_alive:
                    _close(sock)
                    sock = None
        finally:
            timer.close()
            if sock is not None:
                _close(sock)

    async def report_progress(self, say: Callable[[str], None]) -> None:
        span = self.total / self.rate
        while True:
            await trio.sleep(PROGRESS_EVERY)
            elapsed = min(_now() - self.t0, span)
            say(
                f"{elapsed:.0f}/{span:g} s: {len(self.samples)} counted responses, "
                f"{self.errors.total} errors, {self.late} late sends"
            )

    def report(self) -> LatencyReport:
        requests = len(self.samples)
        by_reason = dict(self.errors.by_reason)
        unanswered = self.counted - requests - self.errors.total
        if unanswered > 0:
            by_reason["not answered before the deadline"] = unanswered
        ordered = sorted(self.samples)
        start = self.t0 + self.warm / self.rate
        duration = max(self.last_done - start, 0.0) if requests else 0.0
        return LatencyReport(
            requests=requests,
            errors=sum(by_reason.values()),
            achieved_rps=round(requests / duration, 2) if duration else 0.0,
            late_sends=self.late,
            sent=self.sent,
            answered=self.answered,
            p50_ms=_ms(_percentile(ordered, 0.50)) if ordered else None,
            p90_ms=_ms(_percentile(ordered, 0.90)) if ordered else None,
            p99_ms=_ms(_percentile(ordered, 0.99)) if ordered else None,
            max_ms=_ms(ordered[-1]) if ordered else None,
            mean_ms=_ms(math.fsum(ordered) / requests) if ordered else None,
            duration_s=round(duration, 3),
            errors_by_reason=by_reason,
        )


def check_latency_arguments(
    path: str, rate: int, connections: int, duration: float, warmup: float, request_timeout: float
) -> None:
    """Raises ValueError naming the first argument out of bounds."""
    _check_path(path)
    _check_range("timeout", request_timeout, 0.01, 60)
    _check_range("rate", rate, 1, 100_000)
    _check_range("connections", connections, 1, 1024)
    _check_range("duration", duration, 0.001, 3600)
    _check_range("warmup", warmup, 0, 600)
    if (duration + warmup) * rate > MAX_REQUESTS:
        raise ValueError(
            f"rate x (duration + warmup) is over {MAX_REQUESTS} requests; shorten the run"
        )
    if round(duration * rate) < 1:
        raise ValueError("rate x duration is less than one counted request")


async def run_latency(
    target: SocketAddr | Sequence[SocketAddr],
    path: str = "/bytes/1024",
    rate: int = 1000,
    connections: int = 16,
    duration: float = 30.0,
    warmup: float = 2.0,
    request_timeout: float = REQUEST_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> LatencyReport:
    """Open-loop latency at a fixed rate over keep-alive connections to `target` (or, given
    several, connection k to the k-th modulo their number; see the module docstring).
    `request_timeout` bounds each connect + request + response; the whole run returns within
    warmup + duration + 2 x request_timeout (+10 s by default) whatever the target does."""
    targets = [target] if isinstance(target, SocketAddr) else list(target)
    if not targets:
        raise ValueError("no target")
    check_latency_arguments(path, rate, connections, duration, warmup, request_timeout)
    run = _LatencyRun(targets, path, rate, connections, duration, warmup, request_timeout, progress)
    with trio.move_on_after(warmup + duration + 2 * request_timeout):
        slots: list[socket.socket | None] = [None] * connections
        try:
            async with trio.open_nursery() as nursery:
                for k in range(connections):
                    nursery.start_soon(run.open, slots, k)
            run.t0 = _now() + 0.001
            if progress:
                progress(
                    f"latency: {rate} req/s over {connections} connections to "
                    f"{', '.join(map(str, targets))} {path}, {warmup:g} s warmup + {duration:g} s"
                )
            async with trio.open_nursery() as outer:
                if progress:
                    outer.start_soon(run.report_progress, progress)
                async with trio.open_nursery() as nursery:
                    for k in range(connections):
                        nursery.start_soon(run.worker, k, slots[k])
                        slots[k] = None
                outer.cancel_scope.cancel()
        finally:
            for sock in slots:
                if sock is not None:
                    _close(sock)
    return run.report()


def check_connection_arguments(
    path: str, duration: float, concurrency: int, max_connections: int, request_timeout: float
) -> None:
    """Raises ValueError naming the first argument out of bounds."""
    _check_path(path)
    _check_range("timeout", request_timeout, 0.01, 60)
    _check_range("duration", duration, 0.001, 3600)
    _check_range("concurrency", concurrency, 1, 256)
    _check_range("max", max_connections, 1, MAX_REQUESTS)


async def run_connections(
    target: SocketAddr,
    path: str = "/",
    duration: float = 5.0,
    concurrency: int = 4,
    max_connections: int = 20_000,
    request_timeout: float = REQUEST_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> ConnectionReport:
    """New connections per second: `concurrency` workers each connect, send one
    `Connection: close` GET, read the whole response and close, until `duration` has passed or
    `max_connections` attempts were made (each leaves a TIME_WAIT socket holding a local port;
    the default stays within Linux's 28,232 ephemeral ports). `request_timeout` bounds each
    attempt; the run returns within duration + 2 x request_timeout (+10 s by default)."""
    check_connection_arguments(path, duration, concurrency, max_connections, request_timeout)
    request = _request(target, path, close=True)
    times = array("d")
    errors = _Errors(progress)
    attempts = 0
    last_done = start = _now()
    end = start + duration

    async def worker() -> None:
        nonlocal attempts, last_done
        buf = bytearray(RECV_BUFFER)
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        while attempts < max_connections and _now() < end:
            attempts += 1
            began = _now()
            phase = "connect"
            try:
                with trio.fail_after(request_timeout):
                    sock = await _connect(target)
                    phase = "request"
                    try:
                        head = await _exchange(sock, request, buf)
                    finally:
                        _close(sock)
            except (OSError, ResponseError, trio.TooSlowError) as exc:
                errors.add(_reason(phase, exc, request_timeout))
                # Spaces out attempts against a dead target instead of spinning on refusals.
                await trio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            done = _now()
            last_done = max(last_done, done)
            if 200 <= head.status < 300:
                times.append(done - began)
            else:
                errors.add(f"HTTP status {head.status}")

    if progress:
        progress(
            f"connections: {concurrency} workers to {target}{path}, "
            f"{duration:g} s or {max_connections} connections"
        )
    with trio.move_on_after(duration + 2 * request_timeout):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    ordered = sorted(times)
    elapsed = last_done - start
    return ConnectionReport(
        connections=len(ordered),
        errors=errors.total,
        per_second=round(len(ordered) / elapsed, 2) if ordered and elapsed > 0 else 0.0,
        p50_ms=_ms(_percentile(ordered, 0.50)) if ordered else None,
        p99_ms=_ms(_percentile(ordered, 0.99)) if ordered else None,
        duration_s=round(elapsed, 3),
        errors_by_reason=dict(errors.by_reason),
    )


def _target(text: str) -> SocketAddr:
    try:
        return SocketAddr.parse(text, what="target")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="python -m ztunnel_py.bench.loadgen",
        description="HTTP/1.1 load generator of `ztunnel-py bench compare`. Prints one JSON "
        "object on stdout; progress and errors go to stderr.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    lat = sub.add_parser(
        "latency",
        help="open-loop latency at a fixed rate over keep-alive connections",
        description="Open loop: request i is due at t0 + i/rate on connection i % connections "
        "and never sent earlier; latency runs from the due time to the end of the response, so "
        "queueing behind a slow response counts. With --target given several times, "
        "connection k goes to the k-th target modulo their number. Prints requests, errors, "
        "achieved_rps, late_sends, sent, answered, p50_ms, p90_ms, p99_ms, max_ms, mean_ms, "
        "duration_s, errors_by_reason.",
    )
    con = sub.add_parser(
        "connections",
        help="new TCP connections per second (one Connection: close GET each)",
        description="Workers each connect, send one GET with Connection: close, read the whole "
        "response and close, until --duration or --max. Prints connections, errors, "
        "per_second, p50_ms, p99_ms (time from connect to the end of the response), duration_s, "
        "errors_by_reason.",
    )
    lat.add_argument(
        "--target",
        required=True,
        action="append",
        type=_target,
        metavar="IP:PORT",
        help="server to load; repeat it to spread the connections over several",
    )
    con.add_argument(
        "--target", required=True, type=_target, metavar="IP:PORT", help="server to load"
    )
    for p, path in ((lat, "/bytes/1024"), (con, "/")):
        p.add_argument("--path", default=path, help="request path (default: %(default)s)")
        p.add_argument(
            "--timeout",
            type=float,
            default=REQUEST_TIMEOUT,
            metavar="SECONDS",
            help="bound on each connect + request + response (default: %(default)s)",
        )
    lat.add_argument("--rate", type=int, default=1000, help="requests/s (default: %(default)s)")
    lat.add_argument(
        "--connections", type=int, default=16, help="keep-alive connections (default: %(default)s)"
    )
    lat.add_argument(
        "--duration", type=float, default=30.0, help="counted seconds (default: %(default)s)"
    )
    lat.add_argument(
        "--warmup", type=float, default=2.0, help="uncounted seconds first (default: %(default)s)"
    )
    con.add_argument("--duration", type=float, default=5.0, help="seconds (default: %(default)s)")
    con.add_argument(
        "--concurrency", type=int, default=4, help="parallel workers (default: %(default)s)"
    )
    con.add_argument(
        "--max",
        type=int,
        default=20_000,
        dest="max_connections",
        help="at most this many connection attempts (default: %(default)s)",
    )
    return parser, {"latency": lat, "connections": con}


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = _parser()
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(f"loadgen: {line}", file=sys.stderr, flush=True)

    try:
        if args.command == "latency":
            check_latency_arguments(
                args.path, args.rate, args.connections, args.duration, args.warmup, args.timeout
            )
        else:
            check_connection_arguments(
                args.path, args.duration, args.concurrency, args.max_connections, args.timeout
            )
    except ValueError as exc:
        commands[args.command].error(str(exc))
    report: LatencyReport | ConnectionReport
    if args.command == "latency":
        report = trio.run(
            run_latency,
            args.target,
            args.path,
            args.rate,
            args.connections,
            args.duration,
            args.warmup,
            args.timeout,
            say,
        )
        answered = report.requests
    else:
        report = trio.run(
            run_connections,
            args.target,
            args.path,
            args.duration,
            args.concurrency,
            args.max_connections,
            args.timeout,
            say,
        )
        answered = report.connections
    print(json.dumps(asdict(report)), flush=True)
    if not answered:
        say("no request was answered successfully")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
