"""Flags every proxy process shares (agent, sidecar, waypoint): where the control plane is, the
credential, certificate lifetime, drain, connection limits, operator server addresses, logging.
Every flag also reads ztunnel's (or istio-proxy's) environment variable."""

from __future__ import annotations

import argparse
import os

from ztunnel_py.admin import admin, metrics, readiness
from ztunnel_py.model.ports import CONTROL_PLANE_PORT


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


# ztunnel settings this implementation does not have, and what it does instead; a proxy names
# the ones set in its environment at start, so nobody believes they took effect.
UNSUPPORTED_ENV = {
    "ENABLE_PROXY": "the proxy always runs",
    "TRANSPARENT_NETWORK_POLICIES": "not implemented",
    "PROXY_MODE": "run `ztunnel-py sidecar` for one pod's proxy",
    "PROXY_WORKLOAD_INFO": "run `ztunnel-py sidecar` with --pod-name/--pod-namespace",
    "PACKET_MARK": "the packet mark is fixed",
    "KEEPALIVE_TIME": "TCP keepalive is not configurable",
    "KEEPALIVE_INTERVAL": "TCP keepalive is not configurable",
    "KEEPALIVE_RETRIES": "TCP keepalive is not configurable",
    "KEEPALIVE_ENABLED": "TCP keepalive is not configurable",
    "USER_TIMEOUT_ENABLED": "not implemented",
    "INPOD_ENABLED": "pods are always enrolled in-pod",
    "INPOD_PORT_REUSE": "not implemented",
    "XDS_ON_DEMAND": "the whole mesh state is always fetched",
    "FAKE_CA": "certificates always come from the CA",
    "ZTUNNEL_WORKER_THREADS": "one trio thread serves all connections",
    "ZTUNNEL_CPU_LIMIT": "one trio thread serves all connections",
    "POOL_MAX_STREAMS_PER_CONNECTION": "the pool's per-connection stream limit is fixed",
    "ENABLE_ORIG_SRC": "the source address is always preserved",
    "PROXY_CONFIG": "use the flags or their environment variables",
    "IPV6_ENABLED": "both families are always served",
    "HTTP2_STREAM_WINDOW_SIZE": "HTTP/2 windows are fixed",
    "HTTP2_CONNECTION_WINDOW_SIZE": "HTTP/2 windows are fixed",
    "HTTP2_FRAME_SIZE": "HTTP/2 frame size is fixed",
    "UNSTABLE_ENABLE_SOCKS5": "the SOCKS5 listener is always on",
    "LOCALHOST_APP_TUNNEL": "application tunnels are not implemented",
    "ISTIO_META_DNS_PROXY_ADDR": "the DNS proxy listens on 15053 in each pod",
}


# The settings of a proxy that enrolls no pods (a sidecar, a waypoint): no enrollment socket,
# no persisted pod state, no BPF capture and no DNS proxy.
NO_POD_CAPTURE: dict[str, object] = {
    "enroll_socket": "",
    "state_dir": "",
    "no_capture": True,
    "bpf_pin_root": "",
    "bpf_bundle": "",
    "dns_capture": False,
    "preferred_service_namespace": "",
    "mesh_config": "",
}


def unsupported_settings(environ: dict[str, str] | None = None) -> list[str]:
    """One line per ztunnel setting in the environment that this implementation ignores."""
    environ = dict(os.environ) if environ is None else environ
    return [
        f"{name} is set but not supported, ignored: {why}"
        for name, why in UNSUPPORTED_ENV.items()
        if name in environ
    ]


def _add_server_arguments(
    parser: argparse.ArgumentParser, flag: str, prefix: str, server: str, calls: str
) -> None:
    """--<flag>-root-cert and --<flag>-header, from <prefix>_ROOT_CA and <prefix>_HEADER_*."""
    # The xDS roots default to the CA's; the CA's to where Istio mounts them.
    roots_default = "./var/run/secrets/istio/root-cert.pem" if flag == "ca" else ""
    also = "" if flag == "ca" else "; default: --ca-root-cert"
    parser.add_argument(
        f"--{flag}-root-cert",
        default=env(f"{prefix}_ROOT_CA", roots_default),
        metavar="FILE|SYSTEM|PEM",
        help=f"roots for {server}'s certificate: a PEM file, SYSTEM (the system trust store) "
        f"or the PEM text itself (env {prefix}_ROOT_CA{also})",
    )
    parser.add_argument(
        f"--{flag}-header",
        action="append",
        default=_env_headers(f"{prefix}_HEADER_"),
        metavar="NAME=VALUE",
        help=f"a header sent on {calls}; repeatable (env {prefix}_HEADER_<NAME>=VALUE)",
    )


def _env_headers(prefix: str) -> list[str]:
    """`PREFIX<NAME>=value` environment entries as NAME=value items (ztunnel's XDS_HEADER_*
    and CA_HEADER_*)."""
    return [
        f"{k[len(prefix) :]}={v}" for k, v in sorted(os.environ.items()) if k.startswith(prefix)
    ]


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", default=env("NODE_NAME"), help="this node's name (env NODE_NAME)")
    parser.add_argument(
        "--dns-resolv-conf",
        default=env("ZTUNNEL_DNS_RESOLV_CONF", "/etc/resolv.conf"),
        metavar="FILE",
        help="the resolv.conf whose nameservers resolve ServiceEntry endpoints known by name "
        "and get the queries the DNS proxy does not answer (ztunnel uses its own "
        "resolv.conf's; env ZTUNNEL_DNS_RESOLV_CONF)",
    )
    parser.add_argument(
        "--local-config",
        default=env("LOCAL_XDS_PATH"),
        metavar="FILE",
        help="workloads, services and policies from a local YAML file in ztunnel's local-config "
        "format (env LOCAL_XDS_PATH); reloaded on SIGHUP",
    )
    parser.add_argument(
        "--local-xds",
        default=env("LOCAL_XDS"),
        metavar="YAML",
        help="the local config itself rather than a file (env LOCAL_XDS; exclusive with "
        "--local-config)",
    )
    parser.add_argument(
        "--xds-address",
        default=env("XDS_ADDRESS"),
        metavar="HOST:PORT",
        help="take workloads, services and policies from the control plane's workload xDS at "
        "HOST:PORT (or https://HOST:PORT) instead of --local-config (env XDS_ADDRESS)",
    )
    _add_server_arguments(parser, "xds", "XDS", "the xDS server", "the xDS stream")
    parser.add_argument(
        "--xds-hostname",
        default=env("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        help="name expected in the xDS server's certificate (env ALT_XDS_HOSTNAME)",
    )
    parser.add_argument(
        "--instance-ip",
        default=env("INSTANCE_IP"),
        metavar="IP",
        help="this agent's IP, for its xDS node id (env INSTANCE_IP)",
    )
    parser.add_argument(
        "--ca-address",
        default=env("CA_ADDRESS", f"localhost:{CONTROL_PLANE_PORT}"),
        metavar="HOST:PORT",
        help="the control plane's CA at HOST:PORT or https://HOST:PORT (env CA_ADDRESS)",
    )
    _add_server_arguments(parser, "ca", "CA", "the CA", "certificate requests")
    parser.add_argument(
        "--ca-hostname",
        default=env("ALT_CA_HOSTNAME", "istiod.istio-system.svc"),
        help="name expected in the CA's serving certificate (env ALT_CA_HOSTNAME)",
    )
    parser.add_argument(
        "--auth-token",
        default=env("AUTH_TOKEN", "./var/run/secrets/tokens/istio-token"),
        metavar="FILE",
        help="node credential presented to the CA, re-read on every request (env AUTH_TOKEN)",
    )
    parser.add_argument(
        "--secret-ttl",
        default=env("SECRET_TTL", "24h"),
        metavar="DURATION",
        help="requested workload certificate lifetime, e.g. 60s or 24h (env SECRET_TTL)",
    )
    parser.add_argument(
        "--connection-termination-deadline",
        default=env("CONNECTION_TERMINATION_DEADLINE"),
        metavar="DURATION",
        help="on SIGTERM, how long established connections may run on before they are closed "
        "(env CONNECTION_TERMINATION_DEADLINE; default: the termination grace period minus "
        "5 s, or 5 s)",
    )
    parser.add_argument(
        "--termination-grace-period-seconds",
        default=env("TERMINATION_GRACE_PERIOD_SECONDS"),
        metavar="N",
        help="the pod's terminationGracePeriodSeconds, from which the default termination "
        "deadline is derived as ztunnel does (env TERMINATION_GRACE_PERIOD_SECONDS)",
    )
    parser.add_argument(
        "--max-connections",
        default=env("ZTUNNEL_MAX_CONNECTIONS"),
        metavar="N",
        help="at most N connections accepted by the pods' listeners are open at once; more are "
        "reset at once (env ZTUNNEL_MAX_CONNECTIONS; default: half the open-file limit)",
    )
    parser.add_argument(
        "--max-connections-per-listener",
        default=env("ZTUNNEL_MAX_CONNECTIONS_PER_LISTENER"),
        metavar="N",
        help="at most N open at once per listener (one pod's port), so a flood on one pod "
        "leaves the others served (env ZTUNNEL_MAX_CONNECTIONS_PER_LISTENER; default: a "
        "quarter of --max-connections)",
    )
    parser.add_argument(
        "--plaintext-idle-timeout",
        default=env("ZTUNNEL_PLAINTEXT_IDLE_TIMEOUT", "1h"),
        metavar="DURATION",
        help="close an inbound plaintext (15006) connection after this long without a byte "
        "either way (env ZTUNNEL_PLAINTEXT_IDLE_TIMEOUT)",
    )
    parser.add_argument(
        "--pool-unused-release-timeout",
        default=env("POOL_UNUSED_RELEASE_TIMEOUT", "5m"),
        metavar="DURATION",
        help="close an HBONE connection of the pool after this long without a stream (env "
        "POOL_UNUSED_RELEASE_TIMEOUT)",
    )
    parser.add_argument(
        "--cluster-id",
        default=env("ISTIO_META_CLUSTER_ID") or env("CLUSTER_ID", "Kubernetes"),
        help="this proxy's cluster, sent to the control plane (env ISTIO_META_CLUSTER_ID, then "
        "CLUSTER_ID)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=env("CLUSTER_DOMAIN", "cluster.local"),
        help="the cluster's DNS domain, in this proxy's xDS node id (env CLUSTER_DOMAIN)",
    )
    parser.add_argument(
        "--network",
        default=env("NETWORK"),
        help="this proxy's network, sent to the control plane (env NETWORK)",
    )
    # ISTIO_META_<NAME>=value entries go to the control plane as node metadata, as
    # istio-agent and ztunnel send them.
    parser.set_defaults(proxy_metadata=_env_headers("ISTIO_META_"))
    for name, server in (("admin", admin), ("metrics", metrics), ("readiness", readiness)):
        parser.add_argument(
            f"--{name}-address", default=str(server.DEFAULT_ADDRESS), metavar="IP:PORT"
        )
    parser.add_argument(
        "--log-level",
        default=env("LOG_LEVEL", env("RUST_LOG", "info")),
        help="off, error, warn, info, debug (env LOG_LEVEL or RUST_LOG)",
    )
    parser.add_argument(
        "--log-format",
        default=env("LOG_FORMAT", "plain"),
        metavar="plain|json",
        help="log lines as text or as JSON objects (env LOG_FORMAT; as with ztunnel, any value "
        "but json means plain)",
    )
