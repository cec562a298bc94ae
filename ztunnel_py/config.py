"""Typed configuration of the apps, built from flags (which default to ztunnel's env names)."""

from __future__ import annotations

import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import PACKET_MARK
from ztunnel_py.transport.roots import RootCerts

_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Beyond Go's syntax, ztunnel's settings also take whole days and a bare number of seconds.
_DAYS_OR_SECONDS = re.compile(r"^(\d+(?:\.\d+)?)(d?)$")


class ConfigValueError(ValueError):
    """A flag or environment value that cannot be used; the text says which and why."""


def go_duration(text: str) -> float | None:
    """A duration in Go's syntax (`1h30m`, `24h0m0s`, `1.5s`, `300ms`, `10us`, `0`) in seconds;
    None if malformed. No sign: nothing here takes a negative duration."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    for m in _GO_PART.finditer(text):
        if m.start() != position:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        position = m.end()
    return total if position == len(text) and text else None


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """ztunnel's duration settings: Go's syntax (`500ms`, `60s`, `1h30m`, `24h0m0s`), whole
    days (`1d`) or a bare number of seconds."""
    value = text.strip()
    m = _DAYS_OR_SECONDS.match(value)
    seconds = float(m.group(1)) * (86400.0 if m.group(2) else 1.0) if m else go_duration(value)
    if seconds is None:
        raise ConfigValueError(
            f"{what}: {text!r} is not a duration (examples: 60s, 5m, 1h30m, 24h0m0s)"
        )
    return timedelta(seconds=seconds)


def parse_address(text: str, what: str = "address", *, hostname: bool = False) -> SocketAddr:
    """`IP:PORT` or `[IPv6]:PORT` (and `NAME:PORT` with `hostname`) as a socket address."""
    try:
        return SocketAddr.parse(text, hostname=hostname, what=what)
    except ValueError as e:
        raise ConfigValueError(str(e)) from None


def parse_control_plane_address(text: str, what: str) -> SocketAddr:
    """Where the control plane's CA or xDS server is: `HOST:PORT`, or `https://HOST:PORT` as
    ztunnel's CA_ADDRESS and XDS_ADDRESS are written."""
    if "://" in text and not text.startswith("https://"):
        raise ConfigValueError(f"{what}: {text!r}: only https:// (TLS) is supported")
    return parse_address(text.removeprefix("https://").rstrip("/"), what, hostname=True)


def parse_count(text: str, what: str) -> int:
    """A whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigValueError(f"{what}: {text!r} is not a whole number of at least 1")
    return int(text)


def default_max_connections() -> int:
    """Half the process's open-file limit (at least 64): a proxied connection holds two
    descriptors, the accepted one and the one to the other side."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, soft // 2)


def listener_share(max_connections: int) -> int:
    """The default cap of one listener: a quarter of the process's, so a flood on one pod's port
    leaves three quarters to the others."""
    return max(1, max_connections // 4)


def connection_limits(total: str, per_listener: str) -> tuple[int, int]:
    """(--max-connections, --max-connections-per-listener), each defaulted when empty."""
    cap = parse_count(total, "--max-connections") if total else default_max_connections()
    if not per_listener:
        return cap, listener_share(cap)
    return cap, parse_count(per_listener, "--max-connections-per-listener")


DEFAULT_TERMINATION_DEADLINE = timedelta(seconds=5)


def termination_deadline(explicit: str, grace_period_seconds: str) -> timedelta:
    """How long a draining proxy lets established connections run, by ztunnel's rule: an
    explicit deadline wins; otherwise the pod's termination grace period minus 5 s when it is
    over 10 s (minus 1 s when shorter), so the process exits before the kubelet kills it;
    otherwise 5 s."""
    if explicit:
        return parse_duration(explicit, "--connection-termination-deadline")
    if not grace_period_seconds:
        return DEFAULT_TERMINATION_DEADLINE
    if not grace_period_seconds.isdigit():
        raise ConfigValueError(
            f"--termination-grace-period-seconds: {grace_period_seconds!r} is not a whole "
            "number of seconds"
        )
    grace = int(grace_period_seconds)
    return timedelta(seconds=max(grace - (5 if grace > 10 else 1), 0))


_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def parse_headers(items: Sequence[str], what: str) -> tuple[tuple[str, str], ...]:
    """`NAME=VALUE` items as gRPC metadata: names are lowercased (gRPC requires it, and
    environment variable names are usually upper case); reserved or malformed names and values
    with control characters are refused."""
    headers: list[tuple[str, str]] = []
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or not _HEADER_NAME.match(name) or name.startswith("grpc-"):
            raise ConfigValueError(
                f"{what}: {item!r} is not NAME=VALUE with a header name of letters, digits, "
                "'-', '_' or '.' (names starting with grpc- are reserved)"
            )
        if name.endswith("-bin"):
            raise ConfigValueError(f"{what}: binary (-bin) headers like {name!r} are not supported")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ConfigValueError(f"{what}: the value of {name!r} must be printable text")
        headers.append((name, value))
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node: str
    local_config: Path | None
    ca_address: SocketAddr
    ca_root_cert: RootCerts
    ca_hostname: str
    auth_token: Path
    secret_ttl: timedelta
    enroll_socket: Path
    state_dir: Path
    admin_address: SocketAddr
    metrics_address: SocketAddr
    readiness_address: SocketAddr
    capture: bool = True
    bpf_pin_root: Path = Path("/sys/fs/bpf/ztunnel-py")
    bpf_bundle: Path | None = None  # None: the packaged bundle, else the node cache
    trust_domain: str = "cluster.local"
    packet_mark: int = PACKET_MARK
    pool_max_streams: int = 100
    pool_idle_timeout: timedelta = timedelta(minutes=5)
    connect_timeout: timedelta = timedelta(seconds=10)
    workload_wait: timedelta = timedelta(seconds=5)
    termination_deadline: timedelta = DEFAULT_TERMINATION_DEADLINE
    # open connections accepted by the pods' listeners: in all, and per listener (one pod's port)
    max_connections: int = field(default_factory=default_max_connections)
    max_connections_per_listener: int = field(
        default_factory=lambda: listener_share(default_max_connections())
    )
    # inbound plaintext (15006) connections with no byte either way for this long are closed
    plaintext_idle_timeout: timedelta = timedelta(hours=1)
    # workload xDS (None: state from local_config); its roots default to ca_root_cert
    xds_address: SocketAddr | None = None
    xds_root_cert: RootCerts | None = None
    # extra gRPC metadata on CA calls and on the xDS stream (CA_HEADER_*, XDS_HEADER_*)
    ca_headers: tuple[tuple[str, str], ...] = ()
    xds_headers: tuple[tuple[str, str], ...] = ()
    xds_hostname: str = "istiod.istio-system.svc"
    # who this agent is, for the xDS node id ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local
    instance_ip: str = ""
    pod_name: str = ""
    pod_namespace: str = "istio-system"
    # "ztunnel" (the node agent), "sidecar" (one pod's proxy) or "waypoint": the xDS node id's
    # first field
    proxy_type: str = "ztunnel"
    # extra string metadata on the xDS node (a waypoint names its Gateway there)
    node_metadata: tuple[tuple[str, str], ...] = ()
    # ztunnel's CLUSTER_ID, CLUSTER_DOMAIN, NETWORK and ISTIO_META_* settings
    cluster_id: str = "Kubernetes"
    cluster_domain: str = "cluster.local"
    network: str = ""
    proxy_metadata: tuple[tuple[str, str], ...] = ()
    # the local config given inline (LOCAL_XDS) rather than as a file
    local_xds: str = ""
    # the DNS proxy on 15053 in every enrolled pod, with port-53 capture (ISTIO_META_DNS_CAPTURE);
    # unanswered queries go to the nameservers of `dns_resolv_conf`
    dns_capture: bool = False
    dns_resolv_conf: Path = Path("/etc/resolv.conf")
    # the namespace whose service a hostname means when several define it and none is the
    # client's (ztunnel's PREFERED_SERVICE_NAMESPACE)
    dns_preferred_namespace: str = ""
    # Istio's MeshConfig as mounted from the `istio` ConfigMap (None: not read)
    mesh_config: Path | None = None
