"""A real control-plane CA server (gRPC over TLS on 127.0.0.1) for tests, run in process."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from ztunnel_py.controlplane import ca as ca_service
from ztunnel_py.controlplane.app import CA_SUBDIR, ServingCredentials, load_or_create_ca
from ztunnel_py.controlplane.nodeauth import TOKEN_FILE, NodeTokenStore, TokenAuthenticator
from ztunnel_py.controlplane.sources.localconfig import LocalConfigSource
from ztunnel_py.identity.caclient import GrpcCaClient
from ztunnel_py.identity.pki import ROOT_CERT_FILE
from ztunnel_py.model.address import SocketAddr

TRUST_DOMAIN = "cluster.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_workloads(path: Path, workloads: dict[str, list[tuple[str, str]]]) -> None:
    """Local-config YAML: node -> [(namespace, service account)]."""
    lines = ["workloads:"]
    for node, accounts in workloads.items():
        for i, (ns, sa) in enumerate(accounts):
            lines += [
                f"- name: {sa}-{i}",
                f"  namespace: {ns}",
                f"  serviceAccount: {sa}",
                f"  node: {node}",
                '  workloadIps: ["10.0.0.1"]',
                "  services: {}",
            ]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class RunningCa:
    data_dir: Path
    port: int
    server: grpc.Server
    registry: LocalConfigSource
    metrics: CollectorRegistry

    @property
    def address(self) -> SocketAddr:
        return SocketAddr("127.0.0.1", self.port)

    @property
    def root_path(self) -> Path:
        return self.data_dir / CA_SUBDIR / ROOT_CERT_FILE

    def token_file(self, node: str, ttl: timedelta = timedelta(hours=1)) -> Path:
        token = NodeTokenStore(self.data_dir / TOKEN_FILE).issue(node, ttl)
        path = self.data_dir / f"token-{node}"
        path.write_text(token + "\n")
        return path

    def client(self, token_file: Path | None) -> GrpcCaClient:
        return GrpcCaClient(self.address, self.root_path, token_file, timeout=timedelta(seconds=5))

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


def start_ca(
    data_dir: Path,
    local_config: Path,
    *,
    port: int = 0,
    max_ttl: timedelta = timedelta(hours=24),
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
) -> RunningCa:
    ca = load_or_create_ca(data_dir / CA_SUBDIR, TRUST_DOMAIN)
    registry = LocalConfigSource(local_config)
    registry.reload_if_changed()
    metrics = CollectorRegistry()
    service = ca_service.CertificateService(
        ca,
        TokenAuthenticator(NodeTokenStore(data_dir / TOKEN_FILE)),
        registry,
        TRUST_DOMAIN,
        max_ttl,
        metrics,
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=list(interceptors))
    ca_service.add_to_server(service, server)
    bound = server.add_secure_port(f"127.0.0.1:{port}", ServingCredentials(ca, []).credentials())
    server.start()
    return RunningCa(data_dir, bound, server, registry, metrics)
