"""`ztunnel-py controlplane`: wires the CA, node authentication, the workload registry and the
workload xDS server into a gRPC/TLS server, with a monitoring HTTP server beside it (`run`, from
a `ControlPlaneConfig`, logging in the agent's format), and issues node credentials
(`node-token`).

Layout of the data directory:
  ca/root-cert.pem, ca/root-key.pem   the root CA, created on first start and kept (key 0600)
  node-tokens.json                    hashes of node tokens with their node and expiry

grpcio is a blocking library with its own thread pool; this entry point stays synchronous: the
main thread waits for SIGTERM/SIGINT, helper threads watch the configuration sources.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import cast

import grpc
from prometheus_client import CollectorRegistry, ProcessCollector

from ztunnel_py.config import ConfigValueError
from ztunnel_py.controlplane import ca as ca_service
from ztunnel_py.controlplane import kubeca, validate_cli, xds_server
from ztunnel_py.controlplane.config import ControlPlaneConfig, config_from_args
from ztunnel_py.controlplane.kubeauth import KubernetesAuthenticator, store_pods, token_reviewer
from ztunnel_py.controlplane.monitoring import MonitoringServer
from ztunnel_py.controlplane.nodeauth import (
    TOKEN_FILE,
    AuthenticationError,
    NodeAuthenticator,
    NodeTokenStore,
    TokenAuthenticator,
)
from ztunnel_py.controlplane.pipeline import open_pipeline
from ztunnel_py.identity.pki import ROOT_CERT_FILE, CertificateAuthority
from ztunnel_py.model.address import IPAddress, SocketAddr
from ztunnel_py.telemetry import profiling
from ztunnel_py.telemetry.logs import LevelSpecError, setup_logging

log = logging.getLogger("ztunnel_py.controlplane")

SERVING_DNS_NAME = "istiod.istio-system.svc"
SERVING_CERT_TTL = timedelta(days=30)
CA_SUBDIR = "ca"
# Each agent's xDS stream holds a server thread for its lifetime (grpcio is blocking).
GRPC_WORKERS = 128
GRPC_OPTIONS = [
    # Agents keep their stream alive with HTTP/2 pings every 30 s, also while idle.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def main(args: argparse.Namespace) -> int:
    command: str = args.controlplane_command
    if command == "node-token":
        return node_token(Path(args.data_dir), args.node, args.ttl)
    if command == "validate":
        return validate_cli.main(args)
    try:
        setup_logging(args.log_level, json_format=args.log_format == "json")
        config = config_from_args(args)
    except (ConfigValueError, LevelSpecError) as e:
        print(f"ztunnel-py controlplane: {e}", file=sys.stderr)
        return 2
    if config.config_dir is not None and not config.config_dir.is_dir():
        # A typo in a path must not start a control plane that serves an empty mesh.
        print(
            f"ztunnel-py controlplane: --config-dir {config.config_dir}: not a directory",
            file=sys.stderr,
        )
        return 2
    return run(config)


def node_token(data_dir: Path, node: str, ttl: timedelta) -> int:
    store = NodeTokenStore(data_dir / TOKEN_FILE)
    try:
        token = store.issue(node, ttl)
    except (ValueError, OSError, AuthenticationError) as e:
        print(f"ztunnel-py controlplane node-token: {e}", file=sys.stderr)
        return 1
    print(token)
    return 0


def load_or_create_ca(ca_dir: Path, trust_domain: str) -> CertificateAuthority:
    """The root CA kept in `ca_dir`, created (and saved) if there is none yet."""
    if (ca_dir / ROOT_CERT_FILE).exists():
        ca = CertificateAuthority.load(ca_dir)
        log.info("loaded root CA from %s", ca_dir)
        return ca
    ca = CertificateAuthority.create(trust_domain)
    ca.save(ca_dir)
    log.info("created a new root CA in %s", ca_dir)
    return ca


@dataclass
class ServingCredentials:
    """The server's TLS certificate, re-issued from our CA at half-life (fetched per handshake)."""

    ca: CertificateAuthority
    ips: list[IPAddress]
    ttl: timedelta = SERVING_CERT_TTL
    _renew_at: datetime = field(default=datetime.min.replace(tzinfo=UTC), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def credentials(self) -> grpc.ServerCredentials:
        # grpc-stubs types the fetcher without the `None` ("keep the current one") that grpc
        # documents and accepts.
        fetcher = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._issue(), fetcher, require_client_authentication=False
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's per-handshake callback: a new configuration when due, else None."""
        if datetime.now(UTC) < self._renew_at:
            return None
        return self._issue()

    def _issue(self) -> grpc.ServerCertificateConfiguration:
        with self._lock:
            key_pem, chain = self.ca.issue_serving_cert([SERVING_DNS_NAME], self.ips, self.ttl)
            self._renew_at = datetime.now(UTC) + self.ttl / 2
        log.info("issued the serving certificate, valid %s", self.ttl)
        return grpc.ssl_server_certificate_configuration(
            [(key_pem.encode(), "".join(chain[:-1]).encode())]
        )


def run(config: ControlPlaneConfig) -> int:
    data_dir = config.data_dir
    trust_domain = config.trust_domain
    try:
        pipeline = open_pipeline(config)
    except ValueError as e:
        log.error("%s", e)
        return 1
    ca_dir = data_dir / CA_SUBDIR
    try:
        if config.ca_secret is not None:
            ca = kubeca.secret_ca(pipeline.kube, config.ca_secret, ca_dir, trust_domain)
        else:
            ca = load_or_create_ca(ca_dir, trust_domain)
    except (OSError, ValueError, kubeca.KubeRequestError) as e:
        where = f"Secret {config.ca_secret}" if config.ca_secret else str(ca_dir)
        log.error("cannot load or create the root CA in %s: %s", where, e)
        return 1

    node_tokens = TokenAuthenticator(NodeTokenStore(data_dir / TOKEN_FILE))
    authenticator: NodeAuthenticator = node_tokens
    if pipeline.kube is not None and pipeline.store is not None:
        authenticator = KubernetesAuthenticator(
            token_reviewer(pipeline.kube),
            store_pods(pipeline.store),
            node_tokens,
            trust_domain,
            config.trusted_node_accounts,
        )
    metrics_registry = CollectorRegistry()
    # istiod's process_* series too (CPU, memory, file descriptors: the dashboard's resource row)
    ProcessCollector(registry=metrics_registry)
    service = ca_service.CertificateService(
        ca,
        authenticator,
        pipeline.registry,
        trust_domain,
        config.max_cert_ttl,
        metrics_registry,
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"),
        options=GRPC_OPTIONS,
    )
    ca_service.add_to_server(service, server)
    xds = xds_server.XdsServer(pipeline.snapshots, authenticator, metrics_registry)
    xds_server.add_to_server(xds, server)
    listen: SocketAddr = config.listen
    serving_ips: list[IPAddress] = list(config.serving_ips)
    try:
        # grpc servers take the bracketed `[v6]:port` form (no resolver scheme).
        bound = server.add_secure_port(
            str(listen), ServingCredentials(ca, serving_ips).credentials()
        )
    except RuntimeError as e:
        log.error("cannot listen on %s: %s", listen, e)
        return 1
    if bound == 0:
        log.error("cannot listen on %s", listen)
        return 1
    serving = threading.Event()
    try:
        monitoring = MonitoringServer(config.monitoring, metrics_registry, serving.is_set)
    except OSError as e:
        log.error("cannot serve monitoring on %s: %s", config.monitoring, e)
        return 1
    monitoring.add_json("/debug/xds", xds.debug)
    monitoring.add_query_view("/debug/syncz", xds.syncz)
    monitoring.add_query_view("/debug/config_dump", xds.config_dump)
    monitoring.add_json("/debug/config", pipeline.debug)
    monitoring.add_json("/debug/waypoints", pipeline.waypoints)

    stop = threading.Event()
    # A profile runs in the request's thread; shutting down ends it.
    for path in (profiling.PROFILE_PATH, profiling.HEAP_PATH):
        monitoring.add_query_view(path, partial(profiling.respond, path, stop=stop))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pipeline.start(stop)
    if config.ca_secret is not None and pipeline.store is not None:
        store = pipeline.store
        publisher = kubeca.RootPublisher(
            pipeline.kube,
            ca.root_pem,
            lambda: (k.name for k in store.resources() if k.kind == "Namespace"),
        )
        store.subscribe(lambda _snapshot: publisher.changed())
        pipeline.spawn(publisher.run, stop, "root-publisher")
    server.start()
    monitoring.start()
    serving.set()
    names = [SERVING_DNS_NAME, *map(str, serving_ips)]
    log.info(
        "serving the CA on %s (TLS names %s, trust domain %s, root %s), workload xDS on the "
        "same port, monitoring on %s",
        replace(listen, port=bound),
        ", ".join(names),
        trust_domain,
        data_dir / CA_SUBDIR / ROOT_CERT_FILE,
        replace(config.monitoring, port=monitoring.port),
    )
    stop.wait()
    serving.clear()
    server.stop(grace=2).wait()
    xds.close()
    monitoring.stop()
    pipeline.join()
    log.info("stopped")
    return 0
