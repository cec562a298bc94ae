"""Arguments of `ztunnel-py waypoint`: `run` (the waypoint process, `waypoint/args.py`) and the
management verbs of `istioctl waypoint` (`waypoint.py`)."""

from __future__ import annotations

import argparse

from ztunnel_py.ctl.waypoint import DEFAULT_NAME, WAYPOINT_FOR
from ztunnel_py.waypoint.args import add_waypoint_arguments


def _gateway(parser: argparse.ArgumentParser, *, name: bool = True) -> None:
    if name:
        parser.add_argument(
            "name", nargs="?", default=DEFAULT_NAME, help="the Gateway's name (default: waypoint)"
        )
    parser.add_argument("-n", "--namespace", default="default", help="default: default")


def _for(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--for",
        dest="waypoint_for",
        choices=WAYPOINT_FOR,
        default="service",
        help="which traffic the waypoint handles (label istio.io/waypoint-for; default service)",
    )


def _prefix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="zt-", help="the testbed (default: %(default)s)")


def add_waypoint_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="waypoint_command", metavar="COMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run a waypoint: the L7 proxy (routing, L7 policy, resilience, telemetry)",
        description="Run a waypoint for the Gateway (class istio-waypoint) it implements, inside "
        "its pod's network namespace: HBONE in on 15008, every HTTP request through the filter "
        "engine (HTTPRoute/VirtualService routing, L7 AuthorizationPolicy, retries, timeouts, "
        "faults, user filters, Istio's request metrics and an access log), HBONE out to the "
        "chosen endpoint. `ztunnel-py testbed apply -f gateway.yaml` starts one per Gateway.",
    )
    add_waypoint_arguments(run)

    generate = sub.add_parser(
        "generate",
        help="print a waypoint Gateway (and with --deployment what a cluster runs for it)",
        description="Print the Gateway of class istio-waypoint for NAME; with --deployment also "
        "its ServiceAccount, Deployment and Service (our control plane creates no Deployments). "
        "Try: ztunnel-py waypoint generate -n apps --deployment | kubectl apply -f -",
    )
    _gateway(generate)
    _for(generate)
    generate.add_argument("--deployment", action="store_true", help="add what runs it")
    generate.add_argument("--image", help="the waypoint's image (with --deployment)")

    apply = sub.add_parser(
        "apply",
        help="apply a waypoint Gateway on the testbed and wait for its pod",
        description="Write the waypoint Gateway into the testbed's configuration; its gateway "
        "controller starts the waypoint pod. --enroll-namespace also labels the namespace "
        "istio.io/use-waypoint=NAME.",
    )
    _gateway(apply)
    _for(apply)
    apply.add_argument("--enroll-namespace", action="store_true", help="use it namespace-wide")
    apply.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    _prefix(apply)

    listing = sub.add_parser("list", help="the testbed's waypoints and whether they run")
    _gateway(listing, name=False)
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    _prefix(listing)

    delete = sub.add_parser("delete", help="delete waypoint Gateways (and their pods)")
    delete.add_argument("names", nargs="*", metavar="NAME", default=[DEFAULT_NAME])
    _gateway(delete, name=False)
    delete.add_argument("--all", action="store_true", help="every waypoint of the namespace")
    _prefix(delete)
