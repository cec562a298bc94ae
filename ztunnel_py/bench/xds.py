"""`ztunnel-py bench xds`: workload xDS at scale, one agent-side client, real gRPC on loopback.

The control plane's xDS server runs in this process (with its TLS serving certificate from a
throw-away CA and node-token authentication, as in production) and serves a synthetic mesh of
N workloads and M services. The agent side runs in a child process (`XdsClient` feeding a
`ProxyState`, nothing else), so its memory is its own. Reported:

- initial sync: from starting the client to every resource applied to its state;
- the client process's resident memory before connecting, after the sync, and the difference;
- change latency: the server's snapshot changes one workload and the client sees it applied,
  repeated a few times; it includes the server's push debounce, reported beside it.

The child speaks JSON lines on stdout (events with `time.monotonic()` stamps, comparable across
processes on Linux) and takes "watch" commands on stdin. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import grpc
import trio
from prometheus_client import CollectorRegistry

from ztunnel_py.controlplane.snapshot import MeshSnapshot
from ztunnel_py.model import (
    Action,
    Authorization,
    Match,
    NetworkAddress,
    PolicyScope,
    Service,
    SocketAddr,
    TunnelProtocol,
    Workload,
)
from ztunnel_py.model.workload import pod_uid

NODE = "bench-node"
SYNC_TIMEOUT = 120.0
STEP_TIMEOUT = 30.0


@dataclass
class XdsBenchResult:
    workloads: int
    services: int
    policies: int
    index_build_seconds: float
    initial_sync_seconds: float
    bytes_received: int
    client_rss_before_mib: float
    client_rss_after_mib: float
    client_rss_delta_mib: float
    change_latency_ms: list[float]
    change_latency_median_ms: float
    debounce_ms: float


# --- the synthetic mesh ------------------------------------------------------------------------


def _ip(base: str, i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address(base)) + i)


def build_mesh(workloads: int, services: int, policies: int = 10) -> MeshSnapshot:
    """Workloads spread over 100 nodes and 20 namespaces, each the endpoint of one service."""
    namespaces = [f"ns-{i}" for i in range(20)]
    svc: dict[str, Service] = {}
    for i in range(services):
        ns = namespaces[i % len(namespaces)]
        s = Service(
            name=f"svc-{i}",
            namespace=ns,
            hostname=f"svc-{i}.{ns}.svc.cluster.local",
            vips=(NetworkAddress("", _ip("10.96.0.1", i)),),
            ports={80: 8080, 443: 8443},
        )
        svc[s.key] = s
    keys = list(svc)
    wl: dict[str, Workload] = {}
    for i in range(workloads):
        endpoint_of = svc[keys[i % len(keys)]] if keys else None
        ns = endpoint_of.namespace if endpoint_of else namespaces[i % len(namespaces)]
        w = Workload(
            uid=pod_uid(ns, f"pod-{i}"),
            name=f"pod-{i}",
            namespace=ns,
            addresses=(_ip("10.128.0.1", i),),
            service_account=f"sa-{i % 50}",
            node=f"node-{i % 100}",
            tunnel_protocol=TunnelProtocol.HBONE,
            canonical_name=f"app-{i % 500}",
            canonical_revision="v1",
            workload_name=f"app-{i % 500}",
            services={endpoint_of.key: {80: 8080, 443: 8443}} if endpoint_of else {},
        )
        wl[w.uid] = w
    pol: dict[str, Authorization] = {}
    for i in range(policies):
        p = Authorization(
            name=f"deny-{i}",
            namespace=namespaces[i % len(namespaces)],
            scope=PolicyScope.NAMESPACE,
            action=Action.DENY,
            rules=(((Match(destination_ports=(9000 + i,)),),),),
        )
        pol[p.key] = p
    return MeshSnapshot(version=1, workloads=wl, services=svc, policies=pol)


# --- the benchmark (control plane side) ---------------------------------------------------------


class _Child:
    """The client process: JSON events in, commands out."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def event(self, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"the client exited (status {self.proc.wait()}) before {name}")
            message: dict[str, Any] = json.loads(line)
            if message["event"] == "error":
                raise RuntimeError(f"the client failed: {message['message']}")
            if message["event"] == name:
                return message
        raise RuntimeError(f"no {name} from the client within {timeout:g} s")

    def send(self, command: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_bench(
    workloads: int, services: int, changes: int, say: Callable[[str], None]
) -> XdsBenchResult:
    # Imported here: the control plane is only needed on this side.
    from ztunnel_py.controlplane import xds_server
    from ztunnel_py.controlplane.app import ServingCredentials
    from ztunnel_py.controlplane.memsource import MemorySnapshotSource
    from ztunnel_py.controlplane.nodeauth import TOKEN_FILE, NodeTokenStore, TokenAuthenticator
    from ztunnel_py.identity.pki import CertificateAuthority

    say(f"building {workloads:,} workloads and {services:,} services")
    snapshot = build_mesh(workloads, services)
    source = MemorySnapshotSource(snapshot)
    with tempfile.TemporaryDirectory(prefix="zt-bench-xds-") as tmp:
        data = Path(tmp)
        ca = CertificateAuthority.create("cluster.local")
        ca.save(data / "ca")
        token = data / "token"
        token.write_text(NodeTokenStore(data / TOKEN_FILE).issue(NODE, timedelta(hours=1)))
        started = time.monotonic()
        xds = xds_server.XdsServer(
            source, TokenAuthenticator(NodeTokenStore(data / TOKEN_FILE)), CollectorRegistry()
        )
        index_seconds = time.monotonic() - started
        say(
            f"control plane: encoded {len(snapshot.workloads) + len(snapshot.services):,} "
            f"addresses in {index_seconds:.2f} s"
        )
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        xds_server.add_to_server(xds, server)
        port = server.add_secure_port("127.0.0.1:0", ServingCredentials(ca, []).credentials())
        server.start()
        child = _Child(
            [
                sys.executable,
                "-m",
                "ztunnel_py.bench.xds",
                "--address",
                str(SocketAddr("127.0.0.1", port)),
                "--root-cert",
                str(data / "ca" / "root-cert.pem"),
                "--token",
                str(token),
                "--workloads",
                str(len(snapshot.workloads)),
                "--services",
                str(len(snapshot.services)),
                "--policies",
                str(len(snapshot.policies)),
            ]
        )
        try:
            before = child.event("started")
            say(
                f"agent-side client started (pid {child.proc.pid}, "
                f"{before['rss_mib']:.1f} MiB before connecting); waiting for the initial sync"
            )
            synced = child.event("synced", timeout=SYNC_TIMEOUT)
            sync_seconds = synced["t"] - before["t"]
            say(
                f"initial sync applied in {sync_seconds:.2f} s "
                f"({synced['bytes'] / 2**20:.1f} MiB received)"
            )
            latencies = _changes(source, child, changes, say)
        finally:
            child.close()
            server.stop(grace=None).wait()
            xds.close()
    return XdsBenchResult(
        workloads=len(snapshot.workloads),
        services=len(snapshot.services),
        policies=len(snapshot.policies),
        index_build_seconds=round(index_seconds, 3),
        initial_sync_seconds=round(sync_seconds, 3),
        bytes_received=synced["bytes"],
        client_rss_before_mib=round(before["rss_mib"], 1),
        client_rss_after_mib=round(synced["rss_mib"], 1),
        client_rss_delta_mib=round(synced["rss_mib"] - before["rss_mib"], 1),
        change_latency_ms=[round(x, 1) for x in latencies],
        change_latency_median_ms=round(statistics.median(latencies), 1) if latencies else 0.0,
        debounce_ms=xds_server.DEFAULT_DEBOUNCE * 1000,
    )


def _changes(source: Any, child: _Child, changes: int, say: Callable[[str], None]) -> list[float]:
    """Move one workload to another node, `changes` times; latency to the client's state."""
    latencies = []
    for i in range(changes):
        current: MeshSnapshot = source.current()
        uid = next(iter(current.workloads))
        node = f"moved-{i}"
        child.send({"watch": uid, "node": node})
        child.event("watching")
        workloads = dict(current.workloads)
        workloads[uid] = replace(workloads[uid], node=node)
        t0 = time.monotonic()
        source.replace(workloads=workloads)
        seen = child.event("changed")
        latencies.append((seen["t"] - t0) * 1000)
        say(f"change {i + 1}/{changes}: applied by the client {latencies[-1]:.0f} ms later")
    return latencies


def main(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        result = run_bench(args.workloads, args.services, args.changes, say)
    except RuntimeError as e:
        print(f"bench xds: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(
        f"\nworkload xDS, one client over gRPC/TLS on loopback: {result.workloads:,} workloads, "
        f"{result.services:,} services, {result.policies} policies"
    )
    print(f"  server index build       {result.index_build_seconds:8.2f} s")
    print(
        f"  initial sync applied     {result.initial_sync_seconds:8.2f} s"
        f"   ({result.bytes_received / 2**20:.1f} MiB)"
    )
    print(
        f"  client memory (RSS)      {result.client_rss_after_mib:8.1f} MiB"
        f"   (+{result.client_rss_delta_mib:.1f} MiB for the mesh state and stream)"
    )
    print(
        f"  one change, median       {result.change_latency_median_ms:8.1f} ms"
        f"   (includes the {result.debounce_ms:.0f} ms push debounce; "
        f"all: {', '.join(f'{x:.0f}' for x in result.change_latency_ms)})"
    )
    return 0


# --- the agent-side client (child process) ------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _emit(out: IO[str], event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    out.flush()


async def _client(args: argparse.Namespace) -> None:
    from ztunnel_py.protocol.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE
    from ztunnel_py.state.feed import StateFeed
    from ztunnel_py.state.mesh import ProxyState
    from ztunnel_py.telemetry.metrics import XdsMetrics
    from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
    from ztunnel_py.xds.client import XDS_CHANNEL_OPTIONS, XdsClient, agent_node

    out = sys.stdout
    state = ProxyState()
    registry = CollectorRegistry()
    channel = ControlPlaneChannel(
        args.address, Path(args.root_cert), Path(args.token), options=XDS_CHANNEL_OPTIONS
    )
    client = XdsClient(
        channel,
        agent_node("127.0.0.1", "bench", "istio-system", NODE),
        StateFeed(state),
        metrics=XdsMetrics(registry),
    )
    synced = trio.Event()
    watch: dict[str, str] = {}

    def on_change(_change: object) -> None:
        counts = (len(state.workloads()), len(state.services()), len(state.policies()))
        if not synced.is_set() and counts == (args.workloads, args.services, args.policies):
            synced.set()
        uid = watch.get("uid")
        if uid is not None:
            w = state.workload_by_uid(uid)
            if w is not None and w.node == watch["node"]:
                watch.clear()
                _emit(out, "changed")

    state.subscribe(on_change)
    gc.collect()
    _emit(out, "started", rss_mib=_rss_mib())
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.fail_after(SYNC_TIMEOUT):
            await synced.wait()
        gc.collect()
        received = sum(
            registry.get_sample_value("istio_xds_message_bytes_total", {"url": url}) or 0
            for url in (ADDRESS_TYPE, AUTHORIZATION_TYPE)
        )
        _emit(out, "synced", rss_mib=_rss_mib(), bytes=int(received))
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                break  # the benchmark closed our stdin: done
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                watch.update(uid=command["watch"], node=command["node"])
                _emit(out, "watching")
        nursery.cancel_scope.cancel()
    channel.close()


def _client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztunnel_py.bench.xds")
    parser.add_argument("--address", type=SocketAddr.parse, required=True)
    parser.add_argument("--root-cert", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--workloads", type=int, required=True)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--policies", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        trio.run(_client, args)
    except Exception as e:
        _emit(sys.stdout, "error", message=repr(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_client_main(sys.argv[1:]))
