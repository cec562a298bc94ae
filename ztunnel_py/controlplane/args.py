"""Arguments of `ztunnel-py controlplane`: `run` (the server; `config.py` turns its flags into a
`ControlPlaneConfig`), `validate` and `node-token` (offline tools)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from ztunnel_py.config import ConfigValueError, parse_duration
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import CONTROL_PLANE_MONITORING_PORT, CONTROL_PLANE_PORT

T = TypeVar("T")

DEFAULT_LISTEN = SocketAddr("0.0.0.0", CONTROL_PLANE_PORT)
DEFAULT_MONITORING = SocketAddr("0.0.0.0", CONTROL_PLANE_MONITORING_PORT)
DEFAULT_DATA_DIR = "/var/lib/ztunnel-py/controlplane"


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Turn our ValueErrors into argparse errors (usage line plus the message, exit 2)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except (ConfigValueError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"duration {text!r} must be positive")
    return value


def add_controlplane_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="controlplane_command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        help="serve the CA and workload xDS over gRPC/TLS",
        description="Run the control plane. On first start a root CA is created in "
        "DATA_DIR/ca/ and kept; agents trust DATA_DIR/ca/root-cert.pem.",
    )
    _data_dir(run)
    run.add_argument(
        "--listen",
        type=_checked(SocketAddr.parse),
        default=DEFAULT_LISTEN,
        metavar="IP:PORT",
        help=f"gRPC/TLS listen address (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--monitoring",
        type=_checked(SocketAddr.parse),
        default=DEFAULT_MONITORING,
        metavar="IP:PORT",
        help=f"HTTP /ready, /metrics and /debug/xds (default {DEFAULT_MONITORING})",
    )
    sources = run.add_argument_group(
        "configuration sources",
        "Where workloads, services and policies come from. Without any, no node may sign "
        "anything and agents get an empty mesh.",
    )
    sources.add_argument(
        "--config-dir",
        metavar="DIR",
        help="a directory of Kubernetes YAML (Namespace, Pod, Service, ServiceEntry, "
        "WorkloadEntry, AuthorizationPolicy, PeerAuthentication, Gateway, HTTPRoute, "
        "VirtualService, DestinationRule), watched for changes",
    )
    sources.add_argument(
        "--kubernetes",
        action="store_true",
        help="list and watch the same kinds from the Kubernetes API (in-cluster credentials, "
        "else the kubeconfig)",
    )
    sources.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig for --kubernetes")
    cluster = run.add_argument_group(
        "in a cluster (with --kubernetes)",
        "Agents present projected service-account tokens (audience istio-ca), checked with "
        "the TokenReview API; node tokens keep working beside them.",
    )
    cluster.add_argument(
        "--ca-secret",
        metavar="NAMESPACE/NAME",
        help="keep the root CA in this Secret (created with a new root if missing) and publish "
        "its certificate as ConfigMap istio-ca-root-cert in every namespace, as istiod does "
        "with istio-system/istio-ca-secret",
    )
    cluster.add_argument(
        "--trusted-node-accounts",
        default=os.environ.get("CA_TRUSTED_NODE_ACCOUNTS", "istio-system/ztunnel"),
        metavar="NS/SA,...",
        help="service accounts that may ask for the identities of workloads on their own node "
        "(env CA_TRUSTED_NODE_ACCOUNTS, as istiod's; default istio-system/ztunnel)",
    )
    sources.add_argument(
        "--local-config",
        metavar="FILE",
        help="development: workloads, services and policies in ztunnel's local-config YAML "
        "format, re-read when it changes (not combinable with the options above)",
    )
    run.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
    _root_namespace(run)
    run.add_argument(
        "--max-cert-ttl",
        type=_checked(_duration),
        default=timedelta(hours=24),
        metavar="DURATION",
        help="longest workload certificate lifetime granted, e.g. 1h (default 24h)",
    )
    run.add_argument(
        "--serving-ip",
        type=_checked(ipaddress.ip_address),
        nargs="+",
        action="extend",
        default=[],
        metavar="IP",
        help="IP SANs of the serving certificate, besides DNS istiod.istio-system.svc",
    )
    run.add_argument(
        "--log-level",
        default="info",
        metavar="LEVELS",
        help="as the agent's: a level (off, error, warn, info, debug, trace), optionally with "
        "per-module levels, e.g. info,controlplane.store=debug (default info)",
    )
    run.add_argument(
        "--log-format",
        choices=("plain", "json"),
        default="json" if os.environ.get("LOG_FORMAT") == "json" else "plain",
        help="log lines as text or as JSON objects (default from env LOG_FORMAT, as the agent's)",
    )

    validate = sub.add_parser(
        "validate",
        help="check a directory of configuration offline (exit 1 on errors)",
        description="Load every *.yaml/*.yml file below DIR as `run --config-dir DIR` would, "
        "print each problem as 'file:doc[index]: field.path: reason' (warnings marked "
        "'warning:'; documents of kinds the control plane does not use, such as Deployments or "
        "ConfigMaps, marked 'note: skipped'), and exit 1 if any is an error.",
    )
    validate.add_argument("directory", metavar="DIR")
    validate.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="text (one line per problem) or json (a list of diagnostics with file, document, "
        "path, severity, reason, line and column)",
    )
    validate.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
    _root_namespace(validate)

    token = sub.add_parser(
        "node-token",
        help="issue a node credential and print it",
        description="Issue a token that authenticates NODE to the CA; prints it on stdout. "
        "Only a hash is kept in DATA_DIR. A running server accepts it immediately.",
    )
    token.add_argument("node", metavar="NODE", help="the node name (as in workloads' 'node')")
    _data_dir(token)
    token.add_argument(
        "--ttl",
        type=_checked(_duration),
        default=timedelta(hours=24),
        metavar="DURATION",
        help="token lifetime (default 24h)",
    )


def _root_namespace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root-namespace",
        default="istio-system",
        metavar="NAMESPACE",
        help="policies here apply mesh-wide (default istio-system)",
    )


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"state directory: CA key and certificate, node tokens (default {DEFAULT_DATA_DIR})",
    )
