"""A real control plane (CA credentials, Delta ADS, monitoring HTTP) and agent-side xDS clients
on 127.0.0.1 for tests, all in process over real gRPC/TLS."""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import trio
from prometheus_client import CollectorRegistry

from ztunnel_py.admin.readiness import Readiness
from ztunnel_py.controlplane import xds_server
from ztunnel_py.controlplane.app import CA_SUBDIR, ServingCredentials, load_or_create_ca
from ztunnel_py.controlplane.monitoring import MonitoringServer
from ztunnel_py.controlplane.nodeauth import TOKEN_FILE, NodeTokenStore, TokenAuthenticator
from ztunnel_py.controlplane.snapshot import SnapshotSource
from ztunnel_py.identity.pki import ROOT_CERT_FILE
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
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.metrics import XdsMetrics
from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
from ztunnel_py.xds.client import XDS_CHANNEL_OPTIONS, XdsClient, agent_node

TRUST_DOMAIN = "cluster.local"


def workload(i: int, node: str = "node-1", **changes: Any) -> Workload:
    fields: dict[str, Any] = {
        "uid": f"Kubernetes//Pod/demo/pod-{i}",
        "name": f"pod-{i}",
        "namespace": "demo",
        "addresses": (ipaddress.ip_address(f"10.1.{i // 250}.{i % 250 + 1}"),),
        "service_account": "app",
        "node": node,
        "tunnel_protocol": TunnelProtocol.HBONE,
        "workload_name": "app",
        "services": {"demo/app.demo.svc.cluster.local": {80: 8080}},
    }
    fields.update(changes)
    return Workload(**fields)


def service(i: int = 0, **changes: Any) -> Service:
    fields: dict[str, Any] = {
        "name": f"app{i or ''}",
        "namespace": "demo",
        "hostname": f"app{i or ''}.demo.svc.cluster.local",
        "vips": (NetworkAddress("", ipaddress.ip_address(f"10.96.{i // 250}.{i % 250 + 1}")),),
        "ports": {80: 8080},
    }
    fields.update(changes)
    return Service(**fields)


def policy(name: str = "deny-9000", port: int = 9000) -> Authorization:
    return Authorization(
        name=name,
        namespace="demo",
        scope=PolicyScope.NAMESPACE,
        action=Action.DENY,
        rules=(((Match(destination_ports=(port,)),),),),
    )


def by_key(
    workloads: list[Workload] = [],  # noqa: B006 - never mutated
    services: list[Service] = [],  # noqa: B006
    policies: list[Authorization] = [],  # noqa: B006
) -> dict[str, Any]:
    """Keyword arguments for `MemorySnapshotSource.replace`."""
    return {
        "workloads": {w.uid: w for w in workloads},
        "services": {s.key: s for s in services},
        "policies": {p.key: p for p in policies},
    }


@dataclass
class ControlPlane:
    data_dir: Path
    source: SnapshotSource
    port: int = 0
    debounce: float = 0.05
    server: grpc.Server | None = None
    xds: xds_server.XdsServer | None = None
    monitoring: MonitoringServer | None = None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    channels: list[ControlPlaneChannel] = field(default_factory=list)

    def start(self) -> ControlPlane:
        """Start (or restart, on the same port) the gRPC server with the xDS service."""
        ca = load_or_create_ca(self.data_dir / CA_SUBDIR, TRUST_DOMAIN)
        self.registry = CollectorRegistry()
        self.xds = xds_server.XdsServer(
            self.source,
            TokenAuthenticator(NodeTokenStore(self.data_dir / TOKEN_FILE)),
            self.registry,
            debounce=self.debounce,
            debounce_max=self.debounce * 5,
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=16))
        xds_server.add_to_server(self.xds, self.server)
        self.port = self.server.add_secure_port(
            f"127.0.0.1:{self.port}", ServingCredentials(ca, []).credentials()
        )
        self.server.start()
        self.monitoring = MonitoringServer(SocketAddr("127.0.0.1", 0), self.registry, lambda: True)
        self.monitoring.add_json("/debug/xds", self.xds.debug)
        self.monitoring.add_query_view("/debug/syncz", self.xds.syncz)
        self.monitoring.add_query_view("/debug/config_dump", self.xds.config_dump)
        self.monitoring.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None
        if self.xds is not None:
            self.xds.close()
            self.xds = None
        if self.monitoring is not None:
            self.monitoring.stop()
            self.monitoring = None

    @property
    def address(self) -> SocketAddr:
        return SocketAddr("127.0.0.1", self.port)

    @property
    def root_path(self) -> Path:
        return self.data_dir / CA_SUBDIR / ROOT_CERT_FILE

    def token_file(self, node: str = "node-1") -> Path:
        token = NodeTokenStore(self.data_dir / TOKEN_FILE).issue(node, timedelta(hours=1))
        path = self.data_dir / f"token-{node}"
        path.write_text(token + "\n")
        return path

    def channel(self, token_file: Path | None) -> ControlPlaneChannel:
        """A client channel to this control plane, closed by `close_channels`."""
        channel = ControlPlaneChannel(
            self.address, self.root_path, token_file, purpose="xDS", options=XDS_CHANNEL_OPTIONS
        )
        self.channels.append(channel)
        return channel

    def close_channels(self) -> None:
        # grpcio's connectivity watch thread fails if a watched channel is garbage collected
        # unclosed.
        for channel in self.channels:
            channel.close()
        self.channels.clear()

    def client(
        self,
        state: ProxyState,
        *,
        node: str = "node-1",
        readiness: Readiness | None = None,
        metrics: XdsMetrics | None = None,
        token_file: Path | None = None,
    ) -> XdsClient:
        return XdsClient(
            self.channel(token_file or self.token_file(node)),
            agent_node("10.0.0.10", f"ztunnel-{node}", "istio-system", node),
            StateFeed(state, readiness),
            metrics=metrics,
        )

    def debug(self) -> Any:
        return self.view("/debug/xds")

    def view(self, path: str) -> Any:
        """A JSON view of the monitoring server (`path` with its query string)."""
        assert self.monitoring is not None
        url = f"http://127.0.0.1:{self.monitoring.port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def eventually(check: Callable[[], bool], within: float = 1.0) -> float:
    """Wait until `check()` holds; returns the seconds it took (fails after `within` s)."""
    start = time.monotonic()
    with trio.move_on_after(within):
        while not check():
            await trio.sleep(0.005)
        return time.monotonic() - start
    raise AssertionError(f"condition not met within {within} s")
