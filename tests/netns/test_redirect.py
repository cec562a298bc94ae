"""eBPF capture on the real kernel: unmodified pod traffic lands in the agent's listeners.

Topology (namespaces created for this module, removed even on failure; nothing in the root
namespace): `ztrd<hex>-pod` (eth0 10.250.0.2/24, fd77::2/64) -- `-node` (router, also the
probe source 169.254.7.127) -- `-rem` (10.250.1.2/24, fd77:1::2/64, remote server and client).

A toy agent (`ToyAgent`) plays the node agent's part: listeners 15001/15006/15008 created in
the pod netns through `PodNetns` (IP_TRANSPARENT, SO_MARK 0x539), the original destination
read with getsockname(), and a relay to it from a marked socket in the pod netns, bound
transparently to the client's IP for inbound. The app (port 8080/8081 in the pod) and the
remote (9090/9091) are "whoami" servers that answer with the peer they see, then echo.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from ztunnel_py.linux.netns import entered
from ztunnel_py.redirect.bpffs import is_bpffs, unmount
from ztunnel_py.redirect.loader import (
    LAYOUT_VERSION,
    Redirector,
    default_route_interface,
    netns_cookie,
)
from ztunnel_py.redirect.maps import PodSettings, RedirectError
from ztunnel_py.transport.podsockets import PodNetns

pytestmark = pytest.mark.netns

POD4, NODE4_POD, NODE4_REM, REM4 = "10.250.0.2", "10.250.0.1", "10.250.1.1", "10.250.1.2"
POD6, NODE6_POD, NODE6_REM, REM6 = "fd77::2", "fd77::1", "fd77:1::1", "fd77:1::2"
PROBE4 = "169.254.7.127"
POD_IPS = [POD4, POD6]
APP_PORT, APP_EXCLUDED_PORT = 8080, 8081
REMOTE_PORT, REMOTE_EXCLUDED_PORT = 9090, 9091
TIMEOUT = 3.0


def ip_cmd(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout


def ns_exec(netns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


@dataclass
class Topology:
    prefix: str
    fds: dict[str, int] = field(default_factory=dict)

    def name(self, role: str) -> str:
        return f"{self.prefix}{role}"

    @property
    def pod(self) -> int:
        return self.fds["pod"]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology(prefix=f"ztrd{secrets.token_hex(3)}-")
    pod, node, rem = t.name("pod"), t.name("node"), t.name("rem")
    try:
        for n in (pod, node, rem):
            ip_cmd("netns", "add", n)
            ip_cmd("link", "set", "lo", "up", netns=n)
            # No DAD, so link-local addresses (used by neighbour discovery) work at once.
            ns_exec(n, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        ip_cmd(
            "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", pod, netns=node
        )
        ip_cmd(
            "link", "add", "vrem", "type", "veth", "peer", "name", "eth0", "netns", rem, netns=node
        )
        for n, dev, v4, v6 in (
            (node, "vpod", f"{NODE4_POD}/24", f"{NODE6_POD}/64"),
            (node, "vrem", f"{NODE4_REM}/24", f"{NODE6_REM}/64"),
            (pod, "eth0", f"{POD4}/24", f"{POD6}/64"),
            (rem, "eth0", f"{REM4}/24", f"{REM6}/64"),
        ):
            ip_cmd("addr", "add", v4, "dev", dev, netns=n)
            ip_cmd("-6", "addr", "add", v6, "dev", dev, "nodad", netns=n)
            ip_cmd("link", "set", dev, "up", netns=n)
        ip_cmd("addr", "add", f"{PROBE4}/32", "dev", "vpod", netns=node)
        ns_exec(node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for n, gw4, gw6 in ((pod, NODE4_POD, NODE6_POD), (rem, NODE4_REM, NODE6_REM)):
            ip_cmd("route", "add", "default", "via", gw4, netns=n)
            ip_cmd("-6", "route", "add", "default", "via", gw6, netns=n)
        for role in ("pod", "node", "rem"):
            t.fds[role] = os.open(f"/run/netns/{t.name(role)}", os.O_RDONLY | os.O_CLOEXEC)
        yield t
    finally:
        for fd in t.fds.values():
            os.close(fd)
        for n in (pod, node, rem):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


@pytest.fixture(scope="module")
def pin_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bpf") / "pins"


@pytest.fixture(scope="module")
def redirector(pin_root: Path) -> Iterator[Redirector]:
    r = Redirector(pin_root)
    try:
        yield r
    finally:
        r.close()
        r.remove_pins()
        if r.mounted is not None:
            unmount(r.mounted)


@pytest.fixture
def enrolled(topo: Topology, redirector: Redirector) -> Iterator[Redirector]:
    redirector.enroll(topo.pod, "eth0", POD_IPS)
    try:
        yield redirector
    finally:
        redirector.unenroll(topo.pod, "eth0")


def plain(addr: str) -> str:
    return addr.removeprefix("::ffff:")


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def recv_all(sock: trio.socket.SocketType) -> bytes:
    chunks = []
    while chunk := await sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def relay(a: trio.socket.SocketType, b: trio.socket.SocketType) -> None:
    async def pump(src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
        while chunk := await src.recv(65536):
            await send_all(dst, chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    with a, b:
        async with trio.open_nursery() as n:
            n.start_soon(pump, a, b)
            n.start_soon(pump, b, a)


@dataclass(frozen=True)
class Accepted:
    port: int  # the agent listener that got the connection
    original_dst: tuple[str, int]  # its getsockname()
    peer: str


class ToyAgent:
    """Listeners 15001/15006/15008 in the pod netns that relay to the original destination;
    like the agent, it hands its 15001 listener to the redirector."""

    def __init__(self, pod_fd: int, redirector: Redirector) -> None:
        self.ns = PodNetns(pod_fd)
        self.pod_fd = pod_fd
        self.redirector = redirector
        self.accepted: list[Accepted] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = [(port, self.ns.listener("::", port)) for port in (15001, 15006, 15008)]
        for port, listener in listeners:
            self.redirector.register_listener(netns_cookie(self.pod_fd), port, listener.fileno())
        try:
            async with trio.open_nursery() as n:
                for port, listener in listeners:
                    n.start_soon(self._serve, port, listener, n)
                task_status.started()
        finally:
            for _, listener in listeners:
                listener.close()

    async def _serve(
        self, port: int, listener: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        while True:
            conn, peer = await listener.accept()
            host, dport = conn.getsockname()[:2]
            original = (plain(host), dport)
            self.accepted.append(Accepted(port, original, plain(peer[0])))
            if port == 15008:
                with conn:
                    await send_all(conn, b"hbone\n")
                continue
            bind_ip = plain(peer[0]) if port == 15006 else None
            upstream = await self.ns.connect(original, bind_ip=bind_ip)
            nursery.start_soon(relay, conn, upstream)


class Whoami:
    """A server that writes the peer address it sees, then echoes until EOF."""

    def __init__(self, netns_fd: int, port: int) -> None:
        self.ns = PodNetns(netns_fd, mark=0)
        self.port = port
        self.peers: list[str] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.ns.listener("::", self.port, transparent=False, reuseport=False) as listener:
            task_status.started()
            async with trio.open_nursery() as n:
                while True:
                    conn, peer = await listener.accept()
                    self.peers.append(plain(peer[0]))
                    n.start_soon(self._echo, conn, plain(peer[0]))

    async def _echo(self, conn: trio.socket.SocketType, peer: str) -> None:
        with conn:
            await send_all(conn, f"{peer}\n".encode())
            while chunk := await conn.recv(65536):
                await send_all(conn, chunk)


async def talk(
    netns_fd: int,
    dst: tuple[str, int],
    payload: bytes = b"",
    *,
    mark: int = 0,
    bind_ip: str | None = None,
    deadline: float = TIMEOUT,
) -> tuple[str, bytes]:
    """Connect from a plain socket in the netns; return (peer the server saw, echoed bytes)."""
    ns = PodNetns(netns_fd, mark=mark)
    with trio.fail_after(deadline):
        sock = await ns.connect(dst, bind_ip=bind_ip, connect_timeout=deadline)
        with sock:
            received = b""

            async def reader() -> None:
                nonlocal received
                received = await recv_all(sock)

            async with trio.open_nursery() as n:
                n.start_soon(reader)
                await send_all(sock, payload)
                sock.shutdown(socket.SHUT_WR)
    peer, _, echoed = received.partition(b"\n")
    return peer.decode(), echoed


@dataclass
class Scene:
    agent: ToyAgent
    app: Whoami
    app_excluded: Whoami
    remote: Whoami
    remote_excluded: Whoami
    nursery: trio.Nursery

    async def start_agent(self) -> None:
        await self.nursery.start(self.agent.run)


@contextlib.asynccontextmanager
async def scene(
    topo: Topology, redirector: Redirector, *, agent: bool = True
) -> AsyncIterator[Scene]:
    async with trio.open_nursery() as n:
        s = Scene(
            ToyAgent(topo.pod, redirector),
            Whoami(topo.pod, APP_PORT),
            Whoami(topo.pod, APP_EXCLUDED_PORT),
            Whoami(topo.fds["rem"], REMOTE_PORT),
            Whoami(topo.fds["rem"], REMOTE_EXCLUDED_PORT),
            n,
        )
        for server in (s.app, s.app_excluded, s.remote, s.remote_excluded):
            await n.start(server.run)
        if agent:
            await s.start_agent()
        yield s
        n.cancel_scope.cancel()


async def test_outbound_from_an_unmodified_process_is_captured(
    topo: Topology, enrolled: Redirector
) -> None:
    client = (
        "import socket,sys\n"
        f"s = socket.create_connection(('{REM4}', {REMOTE_PORT}), timeout=3)\n"
        "s.shutdown(socket.SHUT_WR)\n"
        "print(s.makefile().readline().strip())\n"
    )
    before = enrolled.counters(topo.pod)
    async with scene(topo, enrolled) as s:
        result = await trio.run_process(
            ["ip", "netns", "exec", topo.name("pod"), "/usr/bin/python3", "-c", client],
            capture_stdout=True,
        )
        assert result.stdout.decode().strip() == POD4  # the remote sees the pod IP
        assert s.agent.accepted == [Accepted(15001, (REM4, REMOTE_PORT), POD4)]
        assert s.remote.peers == [POD4]

        payload = os.urandom(2 << 20)  # large segments through the hairpin, both ways
        peer, echoed = await talk(topo.pod, (REM4, REMOTE_PORT), payload)
        assert (peer, echoed == payload) == (POD4, True)
    after = enrolled.counters(topo.pod)
    assert after.assigns == before.assigns + 2
    assert after.outbound > before.outbound
    assert after.drops == before.drops


async def test_inbound_is_captured_and_the_app_sees_the_client(
    topo: Topology, enrolled: Redirector
) -> None:
    rem = topo.fds["rem"]
    before = enrolled.counters(topo.pod)
    async with scene(topo, enrolled) as s:
        payload = os.urandom(2 << 20)
        peer, echoed = await talk(rem, (POD4, APP_PORT), payload)
        assert peer == REM4  # transparent upstream: the app sees the real client
        assert echoed == payload
        assert s.agent.accepted == [Accepted(15006, (POD4, APP_PORT), REM4)]
        assert s.app.peers == [REM4]

        hbone, _ = await talk(rem, (POD4, 15008))
        assert hbone == "hbone"
        assert s.agent.accepted[-1] == Accepted(15008, (POD4, 15008), REM4)
    after = enrolled.counters(topo.pod)
    assert after.inbound == before.inbound + 2
    assert after.assigns == before.assigns + 2
    assert after.outbound > before.outbound  # the app's replies were hairpinned to the agent


async def test_ipv6_inbound_and_outbound_are_captured(topo: Topology, enrolled: Redirector) -> None:
    async with scene(topo, enrolled) as s:
        peer, echoed = await talk(topo.pod, (REM6, REMOTE_PORT), b"six")
        assert (peer, echoed) == (POD6, b"six")
        peer, echoed = await talk(topo.fds["rem"], (POD6, APP_PORT), b"six")
        assert (peer, echoed) == (REM6, b"six")
        assert s.agent.accepted == [
            Accepted(15001, (REM6, REMOTE_PORT), POD6),
            Accepted(15006, (POD6, APP_PORT), REM6),
        ]


# Connections per case in the reuseport tests. With two listeners and the kernel's hash
# choosing, one of them getting fewer than SPREAD_MIN has a chance below 1e-9, so the bound
# fails only when the kernel does not spread (every connection to the same listener).
SPREAD, SPREAD_MIN = 48, 4


def split(accepted: list[Accepted], port: int) -> int:
    return sum(1 for a in accepted if a.port == port)


async def test_captured_connections_spread_over_a_reuseport_group_at_tc(
    topo: Topology, enrolled: Redirector
) -> None:
    # Two agents' listeners on the same ports in one pod (one SO_REUSEPORT group per port).
    # Since Linux 6.5 tc may assign a listener of a group, and the kernel runs the group's
    # selection (by the connection's hash) when it takes the socket from the packet: every
    # listener of the group gets connections, which is what lets several processes share them.
    # (Before 6.5 the lookup program takes these connections instead: the next test's path.)
    async with scene(topo, enrolled) as s:
        other = ToyAgent(topo.pod, enrolled)
        async with trio.open_nursery() as other_nursery:
            await other_nursery.start(other.run)
            for i in range(SPREAD):
                peer, echoed = await talk(topo.pod, (REM4, REMOTE_PORT), b"out%d" % i)
                assert (peer, echoed) == (POD4, b"out%d" % i)
                peer, echoed = await talk(topo.fds["rem"], (POD4, APP_PORT), b"in%d" % i)
                assert (peer, echoed) == (REM4, b"in%d" % i)
            for port in (15001, 15006):
                counts = (split(s.agent.accepted, port), split(other.accepted, port))
                assert sum(counts) == SPREAD
                assert min(counts) >= SPREAD_MIN, (port, counts)
            other_nursery.cancel_scope.cancel()
        # One of them gone (its listeners closed, as a dying process's are): everything new
        # goes to the other, nothing is dropped or bypasses the agent.
        served = len(s.agent.accepted)
        for _ in range(8):
            assert await talk(topo.pod, (REM4, REMOTE_PORT)) == (POD4, b"")
            assert await talk(topo.fds["rem"], (POD4, APP_PORT)) == (REM4, b"")
        assert len(s.agent.accepted) == served + 16
        assert s.remote.peers.count(POD4) == len(s.remote.peers)


async def connect_from_port(netns_fd: int, dst: tuple[str, int], sport: int) -> bytes:
    """Connect from a fixed client port (SO_REUSEADDR) in the netns and read to EOF."""
    with entered(netns_fd):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setblocking(False)
    with trio.fail_after(TIMEOUT), trio.socket.from_stdlib_socket(raw) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(("0.0.0.0", sport))
        await sock.connect(dst)
        return await recv_all(sock)


def time_wait_ports(netns: str, local_port: int) -> set[int]:
    """Remote ports of the TIME_WAIT sockets on `local_port` in the netns."""
    out = ns_exec(netns, "ss", "-Htn", "state", "time-wait", f"sport = :{local_port}")
    return {int(line.split()[-1].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


async def test_connections_the_lookup_program_assigns_spread_over_a_reuseport_group(
    topo: Topology, enrolled: Redirector
) -> None:
    # A SYN on the tuple of a TIME_WAIT socket takes the socket lookup program's way: it
    # assigns the one listener registered for the port (the last agent to register), and the
    # kernel runs the reuseport selection on that too. The toy agents close 15008 connections
    # first, so each connection leaves a TIME_WAIT socket in the pod for the next on its tuple.
    sports = range(62000, 62000 + SPREAD)
    rem = topo.fds["rem"]
    async with scene(topo, enrolled) as s:
        other = ToyAgent(topo.pod, enrolled)
        async with trio.open_nursery() as other_nursery:
            await other_nursery.start(other.run)
            for sport in sports:
                assert await connect_from_port(rem, (POD4, 15008), sport) == b"hbone\n"
            assert time_wait_ports(topo.name("pod"), 15008) >= set(sports)
            first = (split(s.agent.accepted, 15008), split(other.accepted, 15008))
            for sport in sports:
                assert await connect_from_port(rem, (POD4, 15008), sport) == b"hbone\n"
            second = (
                split(s.agent.accepted, 15008) - first[0],
                split(other.accepted, 15008) - first[1],
            )
            assert sum(second) == SPREAD
            assert min(second) >= SPREAD_MIN, second
            other_nursery.cancel_scope.cancel()

        # The registered listener gone with its agent, and its map entry with it: the lookup
        # program has nothing to assign and drops the SYN (fail closed). The TIME_WAIT socket
        # then answers it with an ACK, the client's reset retires that socket, and the SYN a
        # Linux client resends a few milliseconds later takes the tc path to the listener left.
        before = enrolled.counters(topo.pod)
        served = split(s.agent.accepted, 15008)
        answers: list[bytes] = []

        async def reconnect(sport: int) -> None:
            answers.append(await connect_from_port(rem, (POD4, 15008), sport))

        async with trio.open_nursery() as n:
            for sport in sports[:8]:
                n.start_soon(reconnect, sport)
        assert answers == [b"hbone\n"] * 8
        assert split(s.agent.accepted, 15008) == served + 8
        assert enrolled.counters(topo.pod).drops == before.drops + 8


async def refused_or_timed_out(
    netns_fd: int, dst: tuple[str, int], deadline: float, bind_ip: str | None = None
) -> bool:
    try:
        await talk(netns_fd, dst, deadline=deadline, bind_ip=bind_ip)
    except (trio.TooSlowError, OSError):
        return True
    return False


async def test_without_listeners_capture_fails_closed(topo: Topology, enrolled: Redirector) -> None:
    before = enrolled.counters(topo.pod)
    async with scene(topo, enrolled, agent=False) as s:
        results: dict[str, bool] = {}

        async def attempt(name: str, netns_fd: int, dst: tuple[str, int]) -> None:
            results[name] = await refused_or_timed_out(netns_fd, dst, 1.5)

        async with trio.open_nursery() as n:
            n.start_soon(attempt, "in4", topo.fds["rem"], (POD4, APP_PORT))
            n.start_soon(attempt, "out4", topo.pod, (REM4, REMOTE_PORT))
            n.start_soon(attempt, "in6", topo.fds["rem"], (POD6, APP_PORT))
            n.start_soon(attempt, "out6", topo.pod, (REM6, REMOTE_PORT))
        assert results == {"in4": True, "out4": True, "in6": True, "out6": True}
        assert s.app.peers == [] and s.remote.peers == []  # nothing got through in clear
        assert enrolled.counters(topo.pod).drops > before.drops

        await s.start_agent()  # the agent is back: new connections work again
        peer, _ = await talk(topo.pod, (REM4, REMOTE_PORT))
        assert peer == POD4
        assert [a.port for a in s.agent.accepted] == [15001]


async def test_exclusions_probe_source_and_agent_mark_bypass_capture(
    topo: Topology, redirector: Redirector
) -> None:
    settings = PodSettings(
        excluded_inbound_ports=frozenset({APP_EXCLUDED_PORT}),
        excluded_outbound_ports=frozenset({REMOTE_EXCLUDED_PORT}),
    )
    await trio.to_thread.run_sync(redirector.enroll, topo.pod, "eth0", POD_IPS, settings)
    try:
        async with scene(topo, redirector) as s:
            before = redirector.counters(topo.pod)
            peer, _ = await talk(topo.fds["rem"], (POD4, APP_EXCLUDED_PORT))
            assert peer == REM4 and s.app_excluded.peers == [REM4]
            peer, _ = await talk(topo.pod, (REM4, REMOTE_EXCLUDED_PORT))
            assert peer == POD4 and s.remote_excluded.peers == [POD4]
            # A kubelet probe SNATed to 169.254.7.127 on the node reaches the app directly.
            peer, _ = await talk(topo.fds["node"], (POD4, APP_PORT), bind_ip=PROBE4)
            assert peer == PROBE4 and s.app.peers == [PROBE4]
            # The agent's own traffic (SO_MARK 0x539) is never captured.
            peer, _ = await talk(topo.pod, (REM4, REMOTE_PORT), mark=0x539)
            assert peer == POD4 and s.remote.peers == [POD4]
            assert s.agent.accepted == []
            after = redirector.counters(topo.pod)
            assert after.exempt >= before.exempt + 3
            assert after.assigns == before.assigns

            # Settings change at once, without recompiling or re-attaching.
            await trio.to_thread.run_sync(redirector.update_settings, topo.pod, PodSettings())
            assert redirector.settings(topo.pod) == (POD_IPS, PodSettings())
            peer, _ = await talk(topo.fds["rem"], (POD4, APP_EXCLUDED_PORT))
            assert peer == REM4
            assert s.agent.accepted == [Accepted(15006, (POD4, APP_EXCLUDED_PORT), REM4)]
    finally:
        await trio.to_thread.run_sync(redirector.unenroll, topo.pod, "eth0")


async def test_packets_from_outside_with_the_pod_source_are_dropped(
    topo: Topology, enrolled: Redirector
) -> None:
    before = enrolled.counters(topo.pod)
    async with scene(topo, enrolled) as s:
        # The node binds (transparently) to the pod's own IP.
        assert await refused_or_timed_out(topo.fds["node"], (POD4, APP_PORT), 1.0, POD4)
        assert s.app.peers == [] and s.agent.accepted == []
    assert enrolled.counters(topo.pod).spoofed > before.spoofed


def netns_state(topo: Topology) -> dict[str, str]:
    """Everything enrollment may touch in the pod netns, as text."""
    pod = topo.name("pod")
    return {
        "rules4": ip_cmd("-4", "rule", "show", netns=pod),
        "rules6": ip_cmd("-6", "rule", "show", netns=pod),
        "routes4": ip_cmd("-4", "route", "show", "table", "all", netns=pod),
        "routes6": ip_cmd("-6", "route", "show", "table", "all", netns=pod),
        "qdiscs": ns_exec(pod, "tc", "qdisc", "show"),
        "ingress": ns_exec(pod, "tc", "filter", "show", "dev", "eth0", "ingress"),
        "egress": ns_exec(pod, "tc", "filter", "show", "dev", "eth0", "egress"),
        "sysctls": ns_exec(pod, "sysctl", "net.ipv4.conf.eth0", "net.ipv4.conf.all"),
    }


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_unenroll_restores_the_netns_exactly_and_nothing_leaks(
    topo: Topology, redirector: Redirector
) -> None:
    clean = netns_state(topo)
    fds = open_fds()
    timings = []
    for _ in range(50):
        started = time.monotonic()
        redirector.enroll(topo.pod, "eth0", POD_IPS)
        timings.append(time.monotonic() - started)
        enrolled_state = netns_state(topo)
        redirector.unenroll(topo.pod, "eth0")
        assert netns_state(topo) == clean
    assert open_fds() == fds
    assert redirector.enrolled_pods() == set()
    for key in ("rules4", "rules6", "routes4", "routes6", "qdiscs", "ingress", "egress"):
        assert enrolled_state[key] != clean[key], key
    assert "net.ipv4.conf.eth0.accept_local = 1" in enrolled_state["sysctls"]
    timings.sort()
    print(
        f"\nload {redirector.load_seconds * 1000:.0f} ms; enroll per pod: min "
        f"{timings[0] * 1000:.1f} ms, p50 {timings[25] * 1000:.1f} ms, "
        f"max {timings[-1] * 1000:.1f} ms"
    )


def foreign_filter(topo: Topology, prio: int) -> None:
    """Someone else's tc filter: classic BPF "return 0", which never matches."""
    ns_exec(topo.name("pod"), "tc", "filter", "add", "dev", "eth0", "ingress", "prio", str(prio),
            "handle", "1", "bpf", "bytecode", "1,6 0 0 0,", "classid", "1")  # fmt: skip


def test_other_tc_filters_are_kept_and_never_replaced(
    topo: Topology, redirector: Redirector
) -> None:
    pod = topo.name("pod")
    ns_exec(pod, "tc", "qdisc", "add", "dev", "eth0", "clsact")
    try:
        foreign_filter(topo, prio=5)
        before = netns_state(topo)
        redirector.enroll(topo.pod, "eth0", POD_IPS)
        assert "zt_ingress" in netns_state(topo)["ingress"]
        redirector.unenroll(topo.pod, "eth0")
        assert netns_state(topo) == before

        foreign_filter(topo, prio=1)  # the slot our filters use
        before = netns_state(topo)
        with pytest.raises(RedirectError, match="another tc filter"):
            redirector.enroll(topo.pod, "eth0", POD_IPS)
        assert netns_state(topo) == before
        assert redirector.enrolled_pods() == set()
    finally:
        ns_exec(pod, "tc", "qdisc", "del", "dev", "eth0", "clsact")


@pytest.mark.skipif(
    shutil.which("iptables-save") is None or shutil.which("nft") is None,
    reason="iptables/nftables not installed (scripts/install.sh installs them)",
)
def test_capture_uses_no_iptables_or_nftables_rule(topo: Topology, enrolled: Redirector) -> None:
    pod = topo.name("pod")
    rules = ns_exec(pod, "iptables-save") + ns_exec(pod, "ip6tables-save")
    assert [line for line in rules.splitlines() if line.startswith("-A")] == []
    assert ns_exec(pod, "nft", "list", "ruleset").strip() == ""


async def test_an_ip_held_by_a_stale_pod_is_taken_over(
    topo: Topology, redirector: Redirector
) -> None:
    """A pod that was never unenrolled (agent down when it died) loses its IP to a new pod."""
    node = topo.fds["node"]
    stale = await trio.to_thread.run_sync(redirector.enroll, node, "vpod", [POD4])
    try:
        pod = await trio.to_thread.run_sync(redirector.enroll, topo.pod, "eth0", POD_IPS)
        try:
            assert redirector.enrolled_pods() == {stale, pod}
            redirector.forget(stale)  # what the agent does for a namespace that is gone
            assert redirector.enrolled_pods() == {pod}
            assert redirector.settings(topo.pod) == (POD_IPS, PodSettings())
            async with scene(topo, redirector) as s:
                peer, _ = await talk(topo.fds["rem"], (POD4, APP_PORT))
                assert peer == REM4
                assert [a.port for a in s.agent.accepted] == [15006]
        finally:
            await trio.to_thread.run_sync(redirector.unenroll, topo.pod, "eth0")
    finally:
        await trio.to_thread.run_sync(redirector.unenroll, node, "vpod")
    assert redirector.enrolled_pods() == set()


async def test_a_restarted_agent_finds_the_pinned_programs_and_maps(
    topo: Topology, enrolled: Redirector, pin_root: Path
) -> None:
    async with scene(topo, enrolled) as s:
        await talk(topo.pod, (REM4, REMOTE_PORT))
        counted = enrolled.counters(topo.pod)
        assert counted.assigns >= 1
        assert is_bpffs(pin_root)
        assert sorted(p.name for p in (pin_root / f"v{LAYOUT_VERSION}").iterdir()) == [
            "build",
            "counters",
            "egress",
            "ingress",
            "links",
            "listeners",
            "lookup",
            "pods",
            "reuse",
        ]

        restarted = await trio.to_thread.run_sync(Redirector, pin_root)
        try:
            assert restarted.mounted is None  # the bpffs is already there
            assert restarted.reused_pins == {"ingress", "egress", "lookup"}
            assert not restarted.loaded  # same build stamp: the pins are used as they are
            assert restarted.program_ids() == enrolled.program_ids()
            assert restarted.counters(topo.pod) == counted  # same maps, same contents
            assert restarted.settings(topo.pod) == (POD_IPS, PodSettings())
            # Re-enrolling from the new agent keeps the same programs attached.
            await trio.to_thread.run_sync(restarted.enroll, topo.pod, "eth0", POD_IPS)
            ids = restarted.program_ids()
            shown = ns_exec(topo.name("pod"), "tc", "filter", "show", "dev", "eth0", "ingress")
            assert f"id {ids['ingress']} " in shown
            await talk(topo.pod, (REM4, REMOTE_PORT))
            assert restarted.counters(topo.pod).assigns == counted.assigns + 1
            assert len(s.agent.accepted) == 2
        finally:
            restarted.close()


def test_bad_enrollments_are_refused_and_change_nothing(
    topo: Topology, redirector: Redirector
) -> None:
    clean = netns_state(topo)
    with pytest.raises(RedirectError, match="no interface"):
        redirector.enroll(topo.pod, "eth9", POD_IPS)
    with pytest.raises(RedirectError, match="not an interface name"):
        redirector.enroll(topo.pod, "../eth0", POD_IPS)
    with pytest.raises(RedirectError, match="not an IP address"):
        redirector.enroll(topo.pod, "eth0", ["10.250.0.300"])
    with pytest.raises(RedirectError, match="at least one IP"):
        redirector.enroll(topo.pod, "eth0", [])
    with pytest.raises(RedirectError, match="network namespace"):
        redirector.enroll(topo.fds["pod"] + 1000, "eth0", POD_IPS)
    with pytest.raises(RedirectError, match="not enrolled"):
        redirector.counters(topo.pod)
    with pytest.raises(RedirectError, match="not enrolled"):
        redirector.update_settings(topo.pod, PodSettings())
    redirector.unenroll(topo.pod, "eth0")  # unenrolling a pod that is not enrolled is fine
    assert netns_state(topo) == clean
    assert redirector.enrolled_pods() == set()


def test_the_default_route_interface_is_found(topo: Topology) -> None:
    assert default_route_interface(topo.pod) == "eth0"
    with pytest.raises(RedirectError, match="no default route"):
        default_route_interface(topo.fds["node"])
