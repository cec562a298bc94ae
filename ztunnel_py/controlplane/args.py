"""Arguments of `ztunnel-py controlplane`: `run` (the server) and `node-token` (offline tool)."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from ztunnel_py.config import ConfigValueError, parse_duration, parse_host_port

T = TypeVar("T")

DEFAULT_LISTEN = "0.0.0.0:15012"
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
        help="serve the CA (and, later, workload xDS) over gRPC/TLS",
        description="Run the control plane. On first start a root CA is created in "
        "DATA_DIR/ca/ and kept; agents trust DATA_DIR/ca/root-cert.pem.",
    )
    _data_dir(run)
    run.add_argument(
        "--listen",
        type=_checked(parse_host_port),
        default=parse_host_port(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"gRPC/TLS listen address (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--local-config",
        metavar="FILE",
        help="workloads (and their nodes) in ztunnel's local-config YAML format; re-read when "
        "it changes. Without it no node may sign anything.",
    )
    run.add_argument("--trust-domain", default="cluster.local", help="default: cluster.local")
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
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

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


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"state directory: CA key and certificate, node tokens (default {DEFAULT_DATA_DIR})",
    )
