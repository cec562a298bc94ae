"""The runtime every proxy process shares: the node agent, the sidecar and the waypoint.

`prepare` turns flags into an `AgentConfig`, sets up logging and loads the initial state (xDS or
a local-config file); `run_proxy` starts what each of them needs in one trio nursery:
certificates (the CA client, rotation, retry as soon as the CA is back), the workload xDS client
(with the types and handler the process asks for), the HBONE connection pool, the operator
servers (admin 15000, metrics 15020, readiness 15021), signals and graceful drain, then calls the
process's own `start` and marks it ready. A bad configuration stops the process at start with a
message naming the flag; SIGHUP reloads a local-config file (an invalid one keeps the last good
state).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import platform
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from ztunnel_py import __version__
from ztunnel_py.admin.admin import ConfigDump, serve_admin
from ztunnel_py.admin.metrics import serve_metrics
from ztunnel_py.admin.readiness import Readiness, serve_readiness
from ztunnel_py.config import (
    AgentConfig,
    ConfigValueError,
    connection_limits,
    parse_address,
    parse_control_plane_address,
    parse_duration,
    parse_headers,
    termination_deadline,
)
from ztunnel_py.identity.caclient import GrpcCaClient
from ztunnel_py.identity.manager import CertificateManager
from ztunnel_py.model import Workload
from ztunnel_py.runtime.args import unsupported_settings
from ztunnel_py.runtime.drain import Drain, Shutdown
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.mesh import ProxyState, StateChange
from ztunnel_py.telemetry.logs import LevelSpecError, LogLevels, setup_logging
from ztunnel_py.telemetry.metrics import Metrics, XdsMetrics
from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
from ztunnel_py.transport.pool import HbonePool
from ztunnel_py.transport.roots import RootCerts
from ztunnel_py.xds.client import XDS_CHANNEL_OPTIONS, XdsClient, XdsHandler, agent_node
from ztunnel_py.xds.convert import WORKLOAD_DECODERS, PayloadDecoder
from ztunnel_py.xds.localconfig import ConfigError, parse_local_config

log = logging.getLogger("ztunnel_py.runtime")


def _roots(value: str, what: str) -> RootCerts:
    try:
        return RootCerts.parse(value)
    except ValueError as e:
        raise ConfigValueError(f"{what}: {e}") from None


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if not args.node:
        raise ConfigValueError("--node (env NODE_NAME) is required: the name of this node")
    xds_address = (
        parse_control_plane_address(args.xds_address, "--xds-address") if args.xds_address else None
    )
    if args.local_config and args.local_xds:
        raise ConfigValueError(
            "only one of --local-config (env LOCAL_XDS_PATH) or --local-xds (env LOCAL_XDS) may "
            "be set"
        )
    if xds_address is not None and (args.local_config or args.local_xds):
        raise ConfigValueError(
            "--xds-address (env XDS_ADDRESS) and --local-config (env LOCAL_XDS_PATH or "
            "LOCAL_XDS) are both set: choose one source of workloads"
        )
    max_connections, per_listener = connection_limits(
        args.max_connections, args.max_connections_per_listener
    )
    return AgentConfig(
        node=args.node,
        local_config=Path(args.local_config) if args.local_config else None,
        ca_address=parse_control_plane_address(args.ca_address, "--ca-address"),
        ca_root_cert=_roots(args.ca_root_cert, "--ca-root-cert"),
        ca_hostname=args.ca_hostname,
        auth_token=Path(args.auth_token),
        secret_ttl=parse_duration(args.secret_ttl, "--secret-ttl"),
        enroll_socket=Path(args.enroll_socket),
        state_dir=Path(args.state_dir),
        admin_address=parse_address(args.admin_address, "--admin-address"),
        metrics_address=parse_address(args.metrics_address, "--metrics-address"),
        readiness_address=parse_address(args.readiness_address, "--readiness-address"),
        capture=not args.no_capture,
        bpf_pin_root=Path(args.bpf_pin_root),
        bpf_bundle=Path(args.bpf_bundle) if args.bpf_bundle else None,
        xds_address=xds_address,
        xds_root_cert=_roots(args.xds_root_cert, "--xds-root-cert") if args.xds_root_cert else None,
        ca_headers=parse_headers(args.ca_header, "--ca-header"),
        xds_headers=parse_headers(args.xds_header, "--xds-header"),
        xds_hostname=args.xds_hostname,
        instance_ip=args.instance_ip,
        pod_name=args.pod_name or f"ztunnel-{args.node}",
        pod_namespace=args.pod_namespace,
        termination_deadline=termination_deadline(
            args.connection_termination_deadline, args.termination_grace_period_seconds
        ),
        max_connections=max_connections,
        max_connections_per_listener=per_listener,
        plaintext_idle_timeout=parse_duration(
            args.plaintext_idle_timeout, "--plaintext-idle-timeout"
        ),
        pool_idle_timeout=parse_duration(
            args.pool_unused_release_timeout, "--pool-unused-release-timeout"
        ),
        cluster_id=args.cluster_id,
        cluster_domain=args.cluster_domain,
        network=args.network,
        proxy_metadata=tuple(
            (name, value) for name, _, value in (m.partition("=") for m in args.proxy_metadata)
        ),
        local_xds=args.local_xds,
        dns_capture=args.dns_capture,
        dns_resolv_conf=Path(args.dns_resolv_conf),
        dns_preferred_namespace=args.preferred_service_namespace,
        mesh_config=Path(args.mesh_config) if args.mesh_config else None,
    )


def prepare(
    args: argparse.Namespace, program: str, **overrides: Any
) -> tuple[AgentConfig, LogLevels, ProxyState] | int:
    """Logging, the configuration and the initial state of a proxy process (agent or sidecar);
    an exit status after printing what is wrong when they are not usable."""
    try:
        levels = setup_logging(args.log_level, json_format=args.log_format == "json")
        config = dataclasses.replace(config_from_args(args), **overrides)
    except (ConfigValueError, LevelSpecError) as e:
        print(f"ztunnel-py {program}: {e}", file=sys.stderr)
        return 2
    if args.log_format not in ("plain", "json"):
        log.warning("LOG_FORMAT %r is not json: logging plain text", args.log_format)
    for line in unsupported_settings():
        log.warning("%s", line)
    state = ProxyState()
    if config.xds_address is not None:
        log.info(
            "starting ztunnel-py %s %s on node %s: workloads from xDS at %s",
            program,
            __version__,
            config.node,
            config.xds_address,
        )
    elif config.local_config is None and not config.local_xds:
        print(
            f"ztunnel-py {program}: no workload source; pass --xds-address HOST:PORT (env "
            "XDS_ADDRESS), --local-config FILE (env LOCAL_XDS_PATH) or --local-xds YAML (env "
            "LOCAL_XDS)",
            file=sys.stderr,
        )
        return 2
    else:
        try:
            if config.local_config is not None:
                state.reload_local_config(config.local_config)
            else:
                local = parse_local_config(config.local_xds, "LOCAL_XDS")
                state.replace(local.workloads, local.services, local.policies)
        except ConfigError as e:
            print(f"ztunnel-py {program}: invalid local config: {e}", file=sys.stderr)
            return 2
        log.info(
            "starting ztunnel-py %s %s on node %s: %d workloads, %d services, %d policies",
            program,
            __version__,
            config.node,
            len(state.workloads()),
            len(state.services()),
            len(state.policies()),
        )
    return config, levels, state


@dataclass(slots=True)
class ProxyRuntime:
    """What a proxy process has running once `run_proxy` set it up: shared by the node agent,
    the sidecar and the waypoint, which differ in what they serve."""

    config: AgentConfig
    state: ProxyState
    certs: CertificateManager
    pool: HbonePool
    metrics: Metrics
    dump: ConfigDump
    nursery: trio.Nursery
    drain: Drain
    registry: CollectorRegistry


class TrioTasks:
    """`ztunnel_py_tasks`: the process's trio tasks, counted when scraped (scrapes run on the
    event loop). Every connection and stream holds tasks, so a leak of them shows as growth
    (`bench soak` watches it)."""

    NAME = "ztunnel_py_tasks"
    DOC = "The number of trio tasks in the process"

    def collect(self) -> list[GaugeMetricFamily]:
        root = trio.lowlevel.current_root_task()
        return [GaugeMetricFamily(self.NAME, self.DOC, value=_count_tasks(root) if root else 0)]

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.DOC)]


def _count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(
        _count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks
    )


async def run_proxy(
    config: AgentConfig,
    state: ProxyState,
    levels: LogLevels,
    start: Callable[[ProxyRuntime], Awaitable[None]],
    *,
    feed: Callable[[Readiness], XdsHandler] | None = None,
    decoders: Mapping[str, PayloadDecoder] = WORKLOAD_DECODERS,
) -> None:
    """Certificates, xDS, the HBONE pool, the operator servers; then `start` (which opens what
    the process serves and returns), then readiness. Runs until SIGTERM, SIGINT or
    /quitquitquit, then drains (`drain.py`) and returns.

    xDS updates go to `feed(readiness)` (default: a `StateFeed` of `state`) for the types of
    `decoders`."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, component="ztunnel", tag=__version__)
    registry.register(TrioTasks())
    readiness = Readiness()
    ready_task = readiness.register("workload proxy manager")
    signer = GrpcCaClient(
        config.ca_address,
        config.ca_root_cert,
        config.auth_token,
        hostname=config.ca_hostname,
        headers=config.ca_headers,
    )
    certs = CertificateManager(signer, config.secret_ttl)
    # The control plane is back: certificates retry now, not after a backoff grown meanwhile.
    signer.on_reconnect(certs.ca_reachable)
    xds: XdsClient | None = None
    xds_channel: ControlPlaneChannel | None = None
    if config.xds_address is not None:
        xds_channel = ControlPlaneChannel(
            config.xds_address,
            config.xds_root_cert or config.ca_root_cert,
            config.auth_token,
            hostname=config.xds_hostname,
            purpose="xDS",
            options=XDS_CHANNEL_OPTIONS,
            headers=config.xds_headers,
        )
        xds_channel.on_reconnect(certs.ca_reachable)
        node = agent_node(
            config.instance_ip,
            config.pod_name,
            config.pod_namespace,
            config.node,
            metadata=_node_metadata(config),
            proxy_type=config.proxy_type,
            cluster_domain=config.cluster_domain,
        )
        handler = feed(readiness) if feed is not None else StateFeed(state, readiness)
        xds = XdsClient(xds_channel, node, handler, decoders=decoders, metrics=XdsMetrics(registry))
    pool = HbonePool(idle_timeout=config.pool_idle_timeout.total_seconds())
    dump = ConfigDump()
    dump.add_sections(state.lazy_dump)
    dump.add_section("certificates", certs.dump)
    dump.add_section("version", _version_dump)
    dump.add_section("config", lambda: _config_dump(config))
    drain = Drain()
    try:
        async with trio.open_nursery() as nursery:
            shutdown = Shutdown(
                drain,
                config.termination_deadline.total_seconds(),
                on_drain=lambda: readiness.register("draining"),
                stop=nursery.cancel_scope.cancel,
            )
            nursery.start_soon(shutdown.run)
            await nursery.start(certs.run)
            await nursery.start(pool.run)
            if xds is not None:
                await nursery.start(xds.run)
            nursery.start_soon(_signals, shutdown, config, state)
            await nursery.start(
                lambda task_status: serve_admin(
                    config_dump=dump,
                    log_levels=levels,
                    shutdown=lambda: shutdown.request("/quitquitquit"),
                    address=config.admin_address,
                    task_status=task_status,
                )
            )
            await nursery.start(
                lambda task_status: serve_metrics(
                    registry=registry,
                    address=config.metrics_address,
                    task_status=task_status,
                )
            )
            await nursery.start(
                lambda task_status: serve_readiness(
                    readiness=readiness,
                    address=config.readiness_address,
                    task_status=task_status,
                )
            )
            runtime = ProxyRuntime(
                config, state, certs, pool, metrics, dump, nursery, drain, registry
            )
            await start(runtime)
            tune_gc()
            readiness.mark_ready(ready_task)
            log.info("%s ready", config.proxy_type)
    finally:
        await pool.aclose()
        signer.close()
        if xds_channel is not None:
            xds_channel.close()
        log.info("%s stopped", config.proxy_type)


# Collections of the youngest generation every 20,000 net allocations instead of CPython's 700:
# a proxied request or connection allocates a few hundred container objects that nearly all die
# by reference counting within a millisecond, so a collection every 700 keeps catching requests
# in flight, scanning them and promoting them to older generations that are scanned again.
GC_THRESHOLDS = (20_000, 20, 10)


def tune_gc() -> None:
    """Once the process is up: what start-up allocated (modules, config, state, TLS contexts),
    which lives as long as the process, moves to the permanent generation that collections do
    not scan (`gc.freeze`), and young collections become rarer (`GC_THRESHOLDS`). The cyclic
    collector stays on: a cycle still gets collected, a little later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def prefetch_certificates(rt: ProxyRuntime, mine: Callable[[Workload], bool]) -> None:
    """Fetch the certificates of our workloads (`mine`) now and whenever the state changes,
    so no connection waits for the CA."""

    def prefetch(change: StateChange | None = None) -> None:
        if change is None or change.workloads:
            for w in rt.state.workloads():
                if mine(w):
                    rt.certs.prefetch(w.identity)

    prefetch()
    rt.state.subscribe(prefetch)


async def _signals(shutdown: Shutdown, config: AgentConfig, state: ProxyState) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP and config.local_config is not None:
                try:
                    state.reload_local_config(config.local_config)
                    log.info("reloaded %s", config.local_config)
                except ConfigError as e:
                    log.error("reload failed, keeping the last good state: %s", e)
                continue
            shutdown.request(f"received {signal.Signals(signum).name}")


def _node_metadata(config: AgentConfig) -> dict[str, str]:
    """What the control plane learns about this proxy beyond its id: ISTIO_META_* entries,
    then the cluster and network, then what the process adds (a waypoint's Gateway)."""
    metadata = dict(config.proxy_metadata)
    metadata["CLUSTER_ID"] = config.cluster_id
    if config.network:
        metadata["NETWORK"] = config.network
    return metadata | dict(config.node_metadata)


def _duration(value: timedelta) -> dict[str, int]:
    """A duration as ztunnel's dump writes one: whole seconds and the nanoseconds beyond."""
    nanos = round(value.total_seconds() * 1e9)
    return {"secs": nanos // 1_000_000_000, "nanos": nanos % 1_000_000_000}


def _config_dump(config: AgentConfig) -> dict[str, Any]:
    """The `config` section: ztunnel's names for the settings it shares with ztunnel, then
    ours (marked as such in docs/istio-compat.md)."""
    return {
        "proxy": True,
        "dnsProxy": False,
        "poolMaxStreamsPerConn": config.pool_max_streams,
        "poolUnusedReleaseTimeout": _duration(config.pool_idle_timeout),
        "adminAddr": str(config.admin_address),
        "statsAddr": str(config.metrics_address),
        "readinessAddr": str(config.readiness_address),
        "network": config.network,
        "localNode": config.node,
        "proxyMode": "Dedicated" if config.proxy_type == "sidecar" else "Shared",
        "clusterId": config.cluster_id,
        "clusterDomain": config.cluster_domain,
        "caAddress": str(config.ca_address),
        "altCaHostname": config.ca_hostname,
        "xdsAddress": str(config.xds_address) if config.xds_address is not None else None,
        "altXdsHostname": config.xds_hostname,
        "secretTtl": _duration(config.secret_ttl),
        "xdsOnDemand": False,
        "fakeCa": False,
        "selfTerminationDeadline": _duration(config.termination_deadline),
        "proxyMetadata": dict(config.proxy_metadata),
        "inpodUds": str(config.enroll_socket),
        "packetMark": config.packet_mark,
        "localXdsPath": str(config.local_config) if config.local_config is not None else None,
        "trustDomain": config.trust_domain,
        "maxConnections": config.max_connections,
        "maxConnectionsPerListener": config.max_connections_per_listener,
        "plaintextIdleTimeout": _duration(config.plaintext_idle_timeout),
    }


def _version_dump() -> dict[str, str]:
    """The `version` section, with ztunnel's keys where they apply to a Python build."""
    return {
        "version": __version__,
        "gitTag": __version__,
        "istioVersion": os.environ.get("ISTIO_VERSION", "unknown"),
        "pythonVersion": platform.python_version(),
    }
