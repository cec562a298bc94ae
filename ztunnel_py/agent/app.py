"""The node agent's wiring: state, certificates, enrollment, per-pod proxies, operator servers.

`main(args)` validates the configuration (a bad local-config file stops the agent at start with
a message naming the field), then runs everything in one trio nursery until SIGTERM, SIGINT or
`POST /quitquitquit`. The mesh state comes from the control plane's workload xDS when
`--xds-address` is set (readiness then waits for the first ACK of each type), else from the
local-config file, which SIGHUP reloads (an invalid file keeps the last good state).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from ztunnel_py import __version__
from ztunnel_py.admin.admin import ConfigDump, serve_admin
from ztunnel_py.admin.metrics import serve_metrics
from ztunnel_py.admin.readiness import Readiness, serve_readiness
from ztunnel_py.agent.drain import Drain, Shutdown
from ztunnel_py.agent.enroll import serve_enrollment
from ztunnel_py.agent.inpod import Capture, PodManager
from ztunnel_py.agent.proxy.outbound import Outbound
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
from ztunnel_py.state.feed import StateFeed
from ztunnel_py.state.mesh import ProxyState, StateChange
from ztunnel_py.telemetry.logs import LevelSpecError, LogLevels, setup_logging
from ztunnel_py.telemetry.metrics import CaptureMetrics, Metrics, XdsMetrics
from ztunnel_py.transport.grpc_channel import ControlPlaneChannel
from ztunnel_py.transport.pool import HbonePool
from ztunnel_py.transport.roots import RootCerts
from ztunnel_py.xds.client import XDS_CHANNEL_OPTIONS, XdsClient, agent_node
from ztunnel_py.xds.localconfig import ConfigError

log = logging.getLogger("ztunnel_py.agent")


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
    if xds_address is not None and args.local_config:
        raise ConfigValueError(
            "--xds-address (env XDS_ADDRESS) and --local-config (env LOCAL_XDS_PATH) are both "
            "set: choose one source of workloads"
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
    )


def prepare(
    args: argparse.Namespace, program: str, **overrides: Any
) -> tuple[AgentConfig, LogLevels, ProxyState] | int:
    """Logging, the configuration and the initial state of a proxy process (agent or sidecar);
    an exit status after printing what is wrong when they are not usable."""
    try:
        levels = setup_logging(args.log_level)
        config = dataclasses.replace(config_from_args(args), **overrides)
    except (ConfigValueError, LevelSpecError) as e:
        print(f"ztunnel-py {program}: {e}", file=sys.stderr)
        return 2
    state = ProxyState()
    if config.xds_address is not None:
        log.info(
            "starting ztunnel-py %s %s on node %s: workloads from xDS at %s",
            program,
            __version__,
            config.node,
            config.xds_address,
        )
    elif config.local_config is None:
        print(
            f"ztunnel-py {program}: no workload source; pass --xds-address HOST:PORT (env "
            "XDS_ADDRESS) or --local-config FILE (env LOCAL_XDS_PATH)",
            file=sys.stderr,
        )
        return 2
    else:
        try:
            state.reload_local_config(config.local_config)
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


def main(args: argparse.Namespace) -> int:
    prepared = prepare(args, "agent")
    if isinstance(prepared, int):
        return prepared
    config, levels, state = prepared
    capture = None
    if config.capture:
        # Imported here: the capture code (pyroute2, bpf(2)) is only needed with capture on.
        from ztunnel_py.redirect.loader import Redirector
        from ztunnel_py.redirect.maps import RedirectError

        try:
            capture = Redirector(config.bpf_pin_root)
        except RedirectError as e:
            print(
                f"ztunnel-py agent: cannot load the BPF capture programs: {e}\n"
                "  bcc needs kernel headers at /lib/modules/$(uname -r)/build "
                "(run scripts/install.sh), or start with --no-capture (SOCKS5 only)",
                file=sys.stderr,
            )
            return 1
        log.info("capture programs ready (compiled in %.2f s)", capture.compile_seconds)
    try:
        trio.run(_run, config, state, levels, capture)
    finally:
        if capture is not None:
            capture.close()
    return 0


@dataclass(slots=True)
class ProxyRuntime:
    """What a proxy process has running once `run_proxy` set it up: shared by the node agent
    and the sidecar, which differ only in how pods reach them."""

    config: AgentConfig
    state: ProxyState
    certs: CertificateManager
    outbound: Outbound
    metrics: Metrics
    dump: ConfigDump
    nursery: trio.Nursery
    drain: Drain
    registry: CollectorRegistry


async def run_proxy(
    config: AgentConfig,
    state: ProxyState,
    levels: LogLevels,
    start_pods: Callable[[ProxyRuntime], Awaitable[None]],
) -> None:
    """Certificates, xDS, the HBONE pool, the operator servers; then `start_pods` (which opens
    the pods' listeners and returns), then readiness. Runs until SIGTERM, SIGINT or
    /quitquitquit, then drains (`drain.py`) and returns."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, component="ztunnel", tag=__version__)
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
            proxy_type=config.proxy_type,
        )
        xds = XdsClient(
            xds_channel, node, StateFeed(state, readiness), metrics=XdsMetrics(registry)
        )
    pool = HbonePool(idle_timeout=config.pool_idle_timeout.total_seconds())
    dump = ConfigDump()
    dump.add_sections(state.dump)
    dump.add_section("certificates", certs.dump)
    dump.add_section("version", lambda: {"version": __version__})
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
            outbound = Outbound(state, certs, pool, metrics, config.connect_timeout, nursery)
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
                config, state, certs, outbound, metrics, dump, nursery, drain, registry
            )
            await start_pods(runtime)
            readiness.mark_ready(ready_task)
            log.info("%s ready", config.proxy_type)
    finally:
        await pool.aclose()
        signer.close()
        if xds_channel is not None:
            xds_channel.close()
        log.info("%s stopped", config.proxy_type)


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


async def _run(
    config: AgentConfig,
    state: ProxyState,
    levels: LogLevels,
    capture: Capture | None,
) -> None:
    async def start_pods(rt: ProxyRuntime) -> None:
        prefetch_certificates(rt, lambda w: w.node == config.node)
        pods = PodManager(
            config, state, rt.certs, rt.outbound, rt.metrics, rt.nursery, rt.drain, capture
        )
        rt.dump.add_section("workloadState", pods.dump)
        if capture is not None:
            CaptureMetrics(rt.registry, pods.capture_counters)
        await pods.restore()

        async def enrollment(*, task_status: trio.TaskStatus[None]) -> None:
            # A draining agent takes no new pods: their listeners would never accept.
            with rt.drain.accepting():
                await serve_enrollment(str(config.enroll_socket), pods, task_status=task_status)

        await rt.nursery.start(enrollment)

    await run_proxy(config, state, levels, start_pods)


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


def _config_dump(config: AgentConfig) -> dict[str, Any]:
    return {
        "nodeName": config.node,
        "localConfig": str(config.local_config or ""),
        "xdsAddress": str(config.xds_address or ""),
        "caAddress": str(config.ca_address),
        "secretTtl": f"{int(config.secret_ttl.total_seconds())}s",
        "inpodUds": str(config.enroll_socket),
        "trustDomain": config.trust_domain,
        "packetMark": config.packet_mark,
        "poolMaxStreamsPerConnection": config.pool_max_streams,
        "poolUnusedReleaseTimeout": f"{int(config.pool_idle_timeout.total_seconds())}s",
        "connectionTerminationDeadline": (f"{config.termination_deadline.total_seconds():g}s"),
        "maxConnections": config.max_connections,
        "maxConnectionsPerListener": config.max_connections_per_listener,
        "plaintextIdleTimeout": f"{config.plaintext_idle_timeout.total_seconds():g}s",
    }
