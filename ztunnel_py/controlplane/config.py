"""The control plane's typed configuration, built from the `controlplane run` flags (`args.py`).

Flag values are parsed by argparse (addresses, durations, IPs); `config_from_args` adds the
rules that involve several flags, so a bad combination stops the process with the flag names
before anything starts, as the agent's configuration does.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ztunnel_py.config import ConfigValueError
from ztunnel_py.model.address import IPAddress, SocketAddr


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    data_dir: Path
    # gRPC/TLS (CA and Delta ADS), and HTTP (/ready, /metrics, /debug/*)
    listen: SocketAddr
    monitoring: SocketAddr
    # configuration sources: a directory of YAML and/or the Kubernetes API, or (alone, for
    # development) ztunnel's local-config file; none means an empty mesh
    config_dir: Path | None = None
    kubernetes: bool = False
    kubeconfig: Path | None = None
    # in a cluster: the Secret holding the root CA, and the node agents' service accounts
    ca_secret: str | None = None
    trusted_node_accounts: tuple[str, ...] = ("istio-system/ztunnel",)
    local_config: Path | None = None
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    max_cert_ttl: timedelta = timedelta(hours=24)
    # IP SANs of the serving certificate, besides its DNS name
    serving_ips: tuple[IPAddress, ...] = ()
    # levels as the agent takes them: `info`, or `info,controlplane.store=debug`
    log_level: str = "info"


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def config_from_args(args: argparse.Namespace) -> ControlPlaneConfig:
    """The configuration `controlplane run` was given; ConfigValueError for a bad combination."""
    if args.local_config and (args.config_dir or args.kubernetes):
        raise ConfigValueError(
            "--local-config cannot be combined with --config-dir or --kubernetes"
        )
    if args.kubeconfig and not args.kubernetes:
        raise ConfigValueError("--kubeconfig is only used with --kubernetes")
    if args.ca_secret and not args.kubernetes:
        raise ConfigValueError("--ca-secret is only used with --kubernetes")
    if args.ca_secret and args.ca_secret.count("/") != 1:
        raise ConfigValueError(f"--ca-secret {args.ca_secret!r} is not NAMESPACE/NAME")
    trusted = tuple(a.strip() for a in args.trusted_node_accounts.split(",") if a.strip())
    if any(a.count("/") != 1 for a in trusted):
        raise ConfigValueError(
            f"--trusted-node-accounts {args.trusted_node_accounts!r}: each entry is NS/SA"
        )
    return ControlPlaneConfig(
        data_dir=Path(args.data_dir),
        listen=args.listen,
        monitoring=args.monitoring,
        config_dir=_path(args.config_dir),
        kubernetes=args.kubernetes,
        kubeconfig=_path(args.kubeconfig),
        ca_secret=args.ca_secret or None,
        trusted_node_accounts=trusted,
        local_config=_path(args.local_config),
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        max_cert_ttl=args.max_cert_ttl,
        serving_ips=tuple(args.serving_ip),
        log_level=args.log_level,
    )
