"""`ztunnel-py zc ...` and `ztunnel-py proxy-status`: fetch, then print a table or the data."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import yaml

from ztunnel_py.ctl import tables
from ztunnel_py.ctl.fetch import FetchError, get_json, request
from ztunnel_py.model.ports import ADMIN_PORT

# section of /config_dump -> (columns, rows from the whole dump)
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "workloads": ("workloads", tables.WORKLOAD_COLUMNS),
    "services": ("services", tables.SERVICE_COLUMNS),
    "policies": ("policies", tables.POLICY_COLUMNS),
    "certificates": ("certificates", tables.CERTIFICATE_COLUMNS),
    "connections": ("workloadState", tables.CONNECTION_COLUMNS),
}


def _print_data(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def _rows(what: str, dump: dict[str, Any], args: argparse.Namespace) -> list[tables.Row]:
    makers: dict[str, Callable[[], list[tables.Row]]] = {
        "workloads": lambda: tables.workload_rows(dump),
        "services": lambda: tables.service_rows(dump),
        "policies": lambda: tables.policy_rows(dump),
        "certificates": lambda: tables.certificate_rows(dump),
        "connections": lambda: tables.connection_rows(dump, args.direction, args.raw),
    }
    return makers[what]()


def zc(args: argparse.Namespace) -> int:
    what: str = args.zc_command
    try:
        if what == "log":
            # ztunnel's /logging: a POST shows the levels, with `level=` it also changes them.
            path = f"/logging?level={quote(args.level, safe='')}" if args.level else "/logging"
            body = request(args.target, "POST", path, prefix=args.prefix, port=args.admin_port)
            sys.stdout.write(body.decode(errors="replace"))
            return 0
        dump = get_json(args.target, "/config_dump", prefix=args.prefix, port=args.admin_port)
    except FetchError as e:
        print(f"ztunnel-py zc {what}: {e}", file=sys.stderr)
        return 1
    section, columns = SECTIONS[what]
    if args.output != "short":
        _print_data(dump.get(section), args.output)
        return 0
    print(tables.render(columns, _rows(what, dump, args)))
    return 0


def proxy_status(args: argparse.Namespace) -> int:
    try:
        debug = get_json(args.target, "/debug/xds", prefix=args.prefix)
    except FetchError as e:
        print(f"ztunnel-py proxy-status: {e}", file=sys.stderr)
        return 1
    if args.output != "short":
        _print_data(debug.get("clients"), args.output)
        return 0
    print(tables.render(tables.PROXY_STATUS_COLUMNS, tables.proxy_status_rows(debug)))
    return 0


def _target_arguments(parser: argparse.ArgumentParser, default: str, what: str) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        default=default,
        metavar="TARGET",
        help=f"{what} (default: {default}), or HOST:PORT",
    )
    parser.add_argument(
        "--prefix", default="zt-", help="the testbed TARGET is in (default: %(default)s)"
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("short", "json", "yaml"),
        default="short",
        help="a table (short, the default), or the data as JSON or YAML",
    )


def add_zc_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="zc_command", metavar="WHAT", required=True)
    helps = {
        "workloads": "every workload the agent knows: namespace, pod, address, node, waypoint",
        "services": "services with their VIPs, waypoint and healthy endpoints",
        "policies": "authorization policies: namespace, name, action, scope",
        "certificates": "the workload certificates the agent holds, leaf to root",
        "connections": "open connections of the node's enrolled pods",
        "log": "the agent's log levels; --level changes them",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        _target_arguments(p, "node1", "a testbed node whose agent to ask")
        p.add_argument(
            "--admin-port",
            type=int,
            default=ADMIN_PORT,
            help="the agent's admin port (default: %(default)s)",
        )
        if name == "connections":
            p.add_argument("--direction", choices=("inbound", "outbound"))
            p.add_argument("--raw", action="store_true", help="addresses, not workload names")
        if name == "log":
            p.add_argument("--level", help="e.g. debug, or info,access=debug")


def add_proxy_status_arguments(parser: argparse.ArgumentParser) -> None:
    _target_arguments(parser, "controlplane", "the testbed's control plane")
