"""The floor of `bench compare`: the cheapest relay pair a two-hop user-space proxy can be.

A floor relay takes a node agent's place on one node and keeps everything about the path the
mesh cannot avoid: the same BPF capture (`redirect.Redirector`, the real programs, each pod
enrolled with the agent's default settings and the relay's listeners registered as the capture's
targets), the same per-pod listeners opened inside each pod's netns (15001 outbound, 15008 from
the peer relay, 15006 plaintext), the same sockets made in the source pod's netns with the
agent's packet mark, and the client's source address kept towards the application. What it
drops is everything the mesh adds on top: no TLS, no HTTP/2, no identities, no policy, no
metrics, no pooling. Between the nodes a connection is plain TCP from the source pod to the
destination pod's 15008 (where the destination's capture hands it to that node's relay),
prefixed with a 2-byte header carrying the original destination port; the destination IP is
the one connected to. Trio accepts and connects; from then on both directions of every leg are
moved with `os.splice` through a pipe by one thread with a minimal epoll loop (`Mover`): the
bytes never enter Python, and a request costs a few syscalls and no scheduler. (A trio task per
direction, as `transport.relay.splice_relay` has it, cost about 3x the CPU per request here; a
blocking thread per direction cost the same as this loop, but its p99 under load was 0.1-0.2 s,
threads queueing for the GIL.)

So any user-space two-hop proxy on this machine costs at least what the floor costs, and the
mesh's figures divided by the floor's are what compares across machines.

The relay runs as its own process (`python -m ztunnel_py.bench.floor`, one per node, in the
node's netns) so its CPU and memory are read from /proc like an agent's. It answers a connection
on its status socket (Unix stream) with one JSON object: connections relayed per listener, the
ones that failed, and the capture programs' counters of each pod, so a run can show the
bench's traffic really went through the capture and the relays. On SIGTERM it takes its pods
out of the capture and unpins the programs.

`FloorRelays` is the bench's side: it starts one relay per node of a testbed (recorded in the
testbed's state, so `testbed down` stops them too), waits until each serves its status, reads
their counters and stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import ipaddress
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ztunnel_py.linux.netns import NetnsError
from ztunnel_py.model.address import canonical_ip
from ztunnel_py.model.ports import HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT
from ztunnel_py.redirect.loader import Redirector
from ztunnel_py.redirect.maps import PodSettings, RedirectError
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.process import ProcessRecord, stop, wait_for
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.transport.podsockets import PodNetns, local_destination

log = logging.getLogger("ztunnel_py.bench.floor")

Handler = Callable[[trio.socket.SocketType, PodNetns], Awaitable[None]]

# The relay-to-relay header: the original destination port, network byte order.
HEADER = struct.Struct("!H")
CONNECT_TIMEOUT = 10.0
PIPE_SIZE = 1024 * 1024
# Never SPLICE_F_MORE: it corks the destination socket and stalls small exchanges.
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# A peer that connects to 15008 and never sends its header holds two descriptors at most this long.
HEADER_TIMEOUT = 10.0
# Counter names in the status object.
OUTBOUND = "outbound"  # captured on 15001 and sent to the destination's relay
INBOUND = "inbound"  # from the peer relay on 15008, delivered to the pod
PLAINTEXT = "plaintext"  # captured on 15006 (a client without a relay), delivered to the pod
PASSTHROUGH = "passthrough"  # captured on 15001 to a destination without a relay: sent direct
FAILED = "failed"  # a connection the relay could not open or finish


def _ip(address: str) -> str:
    """The address as the pods know it (a dual-stack listener reports IPv4 as ::ffff:a.b.c.d)."""
    return str(canonical_ip(ipaddress.ip_address(address)))


class _Flow:
    """One direction of a connection: bytes from `src` through a pipe to `dst`."""

    __slots__ = ("dst", "ended", "pending", "read_end", "src", "write_end")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # the system limit may refuse; 64 KiB then
            fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0  # bytes in the pipe that `dst` would not take yet
        self.ended = False


class Mover:
    """The bytes of every established connection, both directions, in one thread.

    A minimal loop of its own rather than trio's: level-triggered epoll on every socket; a
    readable socket has what is there spliced into its direction's pipe and on to the other
    socket (`os.splice`, non-blocking, so the bytes stay in the kernel). When the other socket
    is full the direction stalls: its source leaves the read set and the destination waits for
    EPOLLOUT. End of stream is passed on as a half-close; an error resets both sockets. The
    event loop hands connections over through a queue and an eventfd, so every piece of state
    here belongs to this thread alone.
    """

    def __init__(self) -> None:
        self.failed = 0
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._new: queue.SimpleQueue[tuple[socket.socket, socket.socket]] = queue.SimpleQueue()
        # socket fd -> (the flow it is the source of, the flow it is the destination of)
        self._flows: dict[int, tuple[_Flow, _Flow]] = {}
        threading.Thread(target=self._run, name="floor mover", daemon=True).start()

    def add(self, a: trio.socket.SocketType, b: trio.socket.SocketType) -> None:
        """Take over both sockets (the caller must not use or close them afterwards)."""
        self._new.put((socket.socket(fileno=a.detach()), socket.socket(fileno=b.detach())))
        os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        while True:
            for fd, events in self._epoll.poll():
                if fd == self._wake:
                    os.eventfd_read(self._wake)
                    while not self._new.empty():
                        self._register(*self._new.get())
                elif fd in self._flows:
                    try:
                        self._ready(fd, events)
                    except Exception:  # a bug must not stop every other connection
                        log.exception("floor mover: socket %d", fd)
                        flows = self._flows.get(fd)
                        if flows is not None:
                            self._close(*flows)

    def _register(self, a: socket.socket, b: socket.socket) -> None:
        there, back = _Flow(a, b), _Flow(b, a)
        self._flows[a.fileno()] = (there, back)
        self._flows[b.fileno()] = (back, there)
        self._epoll.register(a.fileno(), select.EPOLLIN)
        self._epoll.register(b.fileno(), select.EPOLLIN)

    def _ready(self, fd: int, events: int) -> None:
        out_of, into = self._flows[fd]
        try:
            if events & select.EPOLLERR:  # reported whatever the mask: it must end here
                raise ConnectionResetError(f"socket {fd} failed")
            if events & select.EPOLLOUT and self._flush(into):
                self._watch(into.src)
                self._watch(into.dst)
            if events & (select.EPOLLIN | select.EPOLLHUP) and not out_of.pending:
                if not out_of.ended:
                    self._read(out_of)
                elif not into.pending:  # hung up both ways with nothing left to deliver
                    self._close(out_of, into)
        except OSError:
            self.failed += 1
            self._close(out_of, into)

    def _read(self, flow: _Flow) -> None:
        try:
            moved = os.splice(flow.src.fileno(), flow.write_end, PIPE_SIZE, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        if moved == 0:
            flow.ended = True
            flow.dst.shutdown(socket.SHUT_WR)
            _, back = self._flows[flow.src.fileno()]
            if back.ended and not back.pending:
                self._close(flow, back)
            else:
                self._watch(flow.src)
            return
        flow.pending = moved
        if not self._flush(flow):
            self._watch(flow.src)
            self._watch(flow.dst)

    def _flush(self, flow: _Flow) -> bool:
        """Move the pipe's bytes on; False when the destination is full (the flow stalls)."""
        while flow.pending:
            try:
                flow.pending -= os.splice(
                    flow.read_end, flow.dst.fileno(), flow.pending, flags=SPLICE_FLAGS
                )
            except BlockingIOError:
                return False
        return True

    def _watch(self, sock: socket.socket) -> None:
        """Read `sock` while its flow runs; wait for it to be writable while the flow into it
        is stalled."""
        out_of, into = self._flows[sock.fileno()]
        mask = 0 if out_of.ended or out_of.pending else select.EPOLLIN
        self._epoll.modify(sock.fileno(), mask | (select.EPOLLOUT if into.pending else 0))

    def _close(self, one: _Flow, other: _Flow) -> None:
        for flow in (one, other):
            fd = flow.src.fileno()
            if self._flows.pop(fd, None) is None:  # closed already
                continue
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            flow.src.close()
            os.close(flow.read_end)
            os.close(flow.write_end)


@dataclass(slots=True)
class _Pod:
    name: str
    netns: PodNetns
    ifname: str = ""
    pod_id: int | None = None


@dataclass(slots=True)
class Relay:
    """One node's floor relay: its pods' listeners, what it relayed, and the capture."""

    capture: Redirector
    meshed: frozenset[str]  # pod IPs with a floor relay in front of them (every node's)
    counts: Counter[str] = field(default_factory=Counter)
    pods: list[_Pod] = field(default_factory=list)
    mover: Mover = field(default_factory=Mover)

    async def serve_pod(self, name: str, netns_path: str, nursery: trio.Nursery) -> None:
        """Open the pod's listeners, then enroll it into the capture with them as targets
        (listeners first, as the agent does: captured traffic never finds the pod without
        them)."""
        pod = _Pod(name, PodNetns.open_path(netns_path))
        self.pods.append(pod)
        handlers: dict[int, Handler] = {
            OUTBOUND_PORT: self._outbound,
            HBONE_PORT: self._inbound,
            INBOUND_PLAINTEXT_PORT: self._plaintext,
        }
        listeners = {port: pod.netns.listener("::", port) for port in handlers}
        pod.ifname, ips = await trio.to_thread.run_sync(self.capture.pod_interface, pod.netns.fd)
        pod.pod_id = await trio.to_thread.run_sync(
            self.capture.enroll, pod.netns.fd, pod.ifname, ips, PodSettings()
        )
        for port, listener in listeners.items():
            self.capture.register_listener(pod.pod_id, port, listener.fileno())
            nursery.start_soon(self._accept, listener, pod.netns, handlers[port])

    async def _accept(
        self, listener: trio.socket.SocketType, netns: PodNetns, handler: Handler
    ) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as e:  # out of descriptors: keep the others served
                    log.warning("accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._guarded, handler, conn, netns)

    async def _guarded(
        self, handler: Handler, conn: trio.socket.SocketType, netns: PodNetns
    ) -> None:
        try:
            await handler(conn, netns)
        except (OSError, trio.TooSlowError, ValueError) as e:
            self.counts[FAILED] += 1
            log.info("connection failed: %s", e)
        finally:
            conn.close()

    async def _outbound(self, conn: trio.socket.SocketType, netns: PodNetns) -> None:
        host, port = local_destination(conn)
        dst = _ip(host)
        if dst not in self.meshed:
            upstream = await netns.connect((dst, port), connect_timeout=CONNECT_TIMEOUT)
            self.counts[PASSTHROUGH] += 1
            self.mover.add(conn, upstream)
            return
        upstream = await netns.connect((dst, HBONE_PORT), connect_timeout=CONNECT_TIMEOUT)
        try:
            await upstream.send(HEADER.pack(port))
        except BaseException:
            upstream.close()
            raise
        self.counts[OUTBOUND] += 1
        self.mover.add(conn, upstream)

    async def _inbound(self, conn: trio.socket.SocketType, netns: PodNetns) -> None:
        header = b""
        with trio.fail_after(HEADER_TIMEOUT):
            while len(header) < HEADER.size:
                got = await conn.recv(HEADER.size - len(header))
                if not got:
                    raise ValueError("the peer relay closed before its header")
                header += got
        (port,) = HEADER.unpack(header)
        await self._deliver(conn, netns, port, INBOUND)

    async def _plaintext(self, conn: trio.socket.SocketType, netns: PodNetns) -> None:
        await self._deliver(conn, netns, local_destination(conn)[1], PLAINTEXT)

    async def _deliver(
        self, conn: trio.socket.SocketType, netns: PodNetns, port: int, counter: str
    ) -> None:
        """To the pod's application on `port`, from the client's own address (as the agent
        connects, so the application sees who called)."""
        dst = canonical_ip(ipaddress.ip_address(conn.getsockname()[0]))
        src = canonical_ip(ipaddress.ip_address(conn.getpeername()[0]))
        spoof = src != dst and src.version == dst.version
        upstream = await netns.connect(
            (str(dst), port), bind_ip=str(src) if spoof else None, connect_timeout=CONNECT_TIMEOUT
        )
        self.counts[counter] += 1
        self.mover.add(conn, upstream)

    def status(self) -> dict[str, Any]:
        counters = self.capture.all_counters()
        pods = {}
        for pod in self.pods:
            found = counters.get(pod.pod_id) if pod.pod_id is not None else None
            if found is not None:
                pods[pod.name] = {
                    "assigns": found.assigns,
                    "inbound_packets": found.inbound,
                    "outbound_packets": found.outbound,
                    "drops": found.drops,
                }
        counts = {k: self.counts[k] for k in (OUTBOUND, INBOUND, PLAINTEXT, PASSTHROUGH)}
        return {**counts, FAILED: self.counts[FAILED] + self.mover.failed, "pods": pods}

    def release(self) -> None:
        """Take every pod out of the capture (best effort: a pod's netns may be gone)."""
        for pod in self.pods:
            if pod.pod_id is not None:
                try:
                    self.capture.unenroll(pod.netns.fd, pod.ifname)
                except RedirectError as e:
                    log.warning("unenrolling %s: %s", pod.name, e)
                    self.capture.forget(pod.pod_id)
            pod.netns.close()


async def _serve_status(relay: Relay, path: str, task_status: trio.TaskStatus[None]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        await listener.bind(path)
        listener.listen(16)
        task_status.started()
        while True:
            conn, _ = await listener.accept()
            with conn:
                status = await trio.to_thread.run_sync(relay.status)
                with contextlib.suppress(OSError):
                    await conn.send(json.dumps(status).encode())


async def serve(args: argparse.Namespace) -> None:
    capture = await trio.to_thread.run_sync(Redirector, args.pin_root)
    relay = Relay(capture, frozenset(_ip(a) for a in args.meshed))
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for spec in args.pod:
                    name, _, path = spec.partition("=")
                    await relay.serve_pod(name, path, nursery)
                await nursery.start(_serve_status, relay, args.status)
                log.info("floor relay serving %d pods", len(relay.pods))
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        relay.release()
        capture.close()
        capture.remove_pins()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztunnel_py.bench.floor")
    parser.add_argument("--pin-root", required=True, help="where the capture programs are pinned")
    parser.add_argument("--status", required=True, help="Unix socket answering with the counters")
    parser.add_argument(
        "--pod", action="append", default=[], help="NAME=NETNS_PATH of a pod of this node"
    )
    parser.add_argument(
        "--meshed", action="append", default=[], help="an IP with a floor relay in front"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        trio.run(serve, args)
    except (RedirectError, NetnsError) as e:
        print(f"floor relay: {e}", file=sys.stderr)
        return 1
    return 0


# -- the bench's side ---------------------------------------------------------------------------


def pin_root(bed: Testbed, node: str) -> str:
    """Each node's relay pins its programs apart, as the agents do: nodes share the bpffs."""
    return f"/sys/fs/bpf/ztunnel-py/floor/{bed.prefix}{node}"


class FloorRelays:
    """One floor relay per node of a testbed without the mesh, on the pods it would enroll."""

    def __init__(self, bed: Testbed, timeout: float = 120.0) -> None:
        self.bed = bed
        topology = bed.topology
        enrolled = [p for p in topology.pods if p.ambient]
        meshed = [ip for p in enrolled for ip in p.ips]
        self.records: dict[str, ProcessRecord] = {}
        self.status_paths: dict[str, str] = {}
        for node in topology.nodes:
            status = str(bed.state_dir / f"floor-{node.name}.sock")
            argv = [sys.executable, "-m", "ztunnel_py.bench.floor", "--pin-root"]
            argv += [pin_root(bed, node.name), "--status", status]
            for pod in topology.pods_on(node.name):
                if pod.ambient:
                    argv += ["--pod", f"{pod.name}={namespaces.netns_path(pod.netns)}"]
            for ip in meshed:
                argv += ["--meshed", ip]
            record = ProcessRecord(
                name=f"floor {node.name}",
                netns=node.netns,
                argv=argv,
                log=str(bed.state.log_dir / f"floor-{node.name}.log"),
            )
            bed.launch(record)
            self.records[node.name] = record
            self.status_paths[node.name] = status
        try:
            for name, record in self.records.items():
                wait_for(
                    functools.partial(self._answers, name),
                    [record],
                    timeout,
                    f"the floor relay of {name} to serve",
                )
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> dict[str, int]:
        """name -> pid of each relay."""
        return {r.name: r.pid for r in self.records.values() if r.pid is not None}

    def _answers(self, node: str) -> bool:
        try:
            self.status(node)
        except (OSError, ValueError):
            return False
        return True

    def status(self, node: str) -> dict[str, Any]:
        """The relay's counters (the status object described above)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(self.status_paths[node])
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status: dict[str, Any] = json.loads(data)
        return status

    def stop(self) -> None:
        """SIGTERM (the relays release their pods and pins), then anything left behind."""
        stop(list(self.records.values()))
        for node in self.records:
            shutil.rmtree(pin_root(self.bed, node), ignore_errors=True)
            with contextlib.suppress(OSError):
                Path(pin_root(self.bed, node)).parent.rmdir()


if __name__ == "__main__":
    sys.exit(main())
