"""The node agent's wiring: the BPF capture, enrollment and the per-pod proxies, on the shared
proxy runtime (`runtime.proxy`: certificates, xDS, pool, operator servers, drain).

`main(args)` validates the configuration (a bad local-config file stops the agent at start with
a message naming the field), loads the capture programs, then runs until SIGTERM, SIGINT or
`POST /quitquitquit`. The mesh state comes from the control plane's workload xDS when
`--xds-address` is set (readiness then waits for the first ACK of each type), else from the
local-config file, which SIGHUP reloads (an invalid file keeps the last good state).
"""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from ztunnel_py.agent.enroll import serve_enrollment
from ztunnel_py.agent.inpod import Capture, PodManager
from ztunnel_py.agent.meshconfig import MeshConfigError, MeshConfigWatch
from ztunnel_py.agent.proxy.outbound import Outbound
from ztunnel_py.config import AgentConfig
from ztunnel_py.dnsproxy.resolver import MeshResolver
from ztunnel_py.dnsproxy.server import (
    DnsConfigError,
    DnsProxy,
    UpstreamResolvers,
    read_nameservers,
)
from ztunnel_py.runtime.proxy import ProxyRuntime, prefetch_certificates, prepare, run_proxy
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.logs import LogLevels
from ztunnel_py.telemetry.metrics import CaptureMetrics, DnsMetrics

log = logging.getLogger("ztunnel_py.agent")


def main(args: argparse.Namespace) -> int:
    prepared = prepare(args, "agent")
    if isinstance(prepared, int):
        return prepared
    config, levels, state = prepared
    try:
        mesh = MeshConfigWatch(config.mesh_config) if config.mesh_config else None
    except MeshConfigError as e:
        print(f"ztunnel-py agent: {e}", file=sys.stderr)
        return 1
    upstreams = None
    try:
        upstreams = UpstreamResolvers(read_nameservers(config.dns_resolv_conf))
    except DnsConfigError as e:
        if config.dns_capture and config.capture:
            print(
                f"ztunnel-py agent: {e}\n  point --dns-resolv-conf at a resolv.conf naming the "
                "cluster's DNS server, or start with --no-dns-capture",
                file=sys.stderr,
            )
            return 1
        log.warning("%s: ServiceEntry endpoints known by name cannot be resolved", e)
    capture = None
    if config.capture:
        # Imported here: the capture code (pyroute2, bpf(2)) is only needed with capture on.
        from ztunnel_py.redirect.loader import Redirector
        from ztunnel_py.redirect.maps import RedirectError

        try:
            capture = Redirector(config.bpf_pin_root, bundle=config.bpf_bundle)
        except RedirectError as e:
            print(
                f"ztunnel-py agent: cannot load the BPF capture programs: {e}\n"
                "  (--no-capture starts the agent without capture: SOCKS5 only)",
                file=sys.stderr,
            )
            return 1
        if capture.compile_seconds is not None:
            log.info(
                "capture programs ready (compiled in %.2f s into %s, loaded in %.3f s)",
                capture.compile_seconds,
                capture.bundle_source,
                capture.load_seconds,
            )
        elif capture.loaded:
            log.info(
                "capture programs ready (loaded from %s in %.3f s)",
                capture.bundle_source,
                capture.load_seconds,
            )
        else:
            log.info("capture programs ready (reused the pinned ones, nothing loaded)")
    try:
        trio.run(_run, config, state, levels, capture, upstreams, mesh)
    finally:
        if capture is not None:
            capture.close()
    return 0


async def _run(
    config: AgentConfig,
    state: ProxyState,
    levels: LogLevels,
    capture: Capture | None,
    upstreams: UpstreamResolvers | None,
    mesh: MeshConfigWatch | None,
) -> None:
    async def start_pods(rt: ProxyRuntime) -> None:
        prefetch_certificates(rt, lambda w: w.node == config.node)
        dns = None
        if upstreams is not None and config.dns_capture and capture is not None:
            resolver = MeshResolver(state, config.cluster_domain, config.dns_preferred_namespace)
            dns = DnsProxy(resolver, upstreams, DnsMetrics(rt.registry))
        outbound = Outbound(
            state,
            rt.certs,
            rt.pool,
            rt.metrics,
            config.connect_timeout,
            rt.nursery,
            resolve_host=upstreams.resolve_host if upstreams is not None else None,
            registry_only=(lambda: mesh.current.registry_only)
            if mesh is not None
            else lambda: False,
        )
        if mesh is not None:
            rt.nursery.start_soon(mesh.watch)
        pods = PodManager(
            config,
            state,
            rt.certs,
            outbound,
            rt.metrics,
            rt.nursery,
            rt.drain,
            capture,
            dns=dns,
        )
        rt.dump.add_section("workloadState", pods.dump)
        rt.dump.add_section("dns", pods.dns_dump)
        if capture is not None:
            CaptureMetrics(rt.registry, pods.capture_counters)
        await pods.restore()

        async def enrollment(*, task_status: trio.TaskStatus[None]) -> None:
            # A draining agent takes no new pods: their listeners would never accept.
            with rt.drain.accepting():
                await serve_enrollment(str(config.enroll_socket), pods, task_status=task_status)

        await rt.nursery.start(enrollment)

    await run_proxy(config, state, levels, start_pods)
