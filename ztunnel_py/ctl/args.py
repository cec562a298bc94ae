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


def add_canary_commands(parser: argparse.ArgumentParser) -> None:
    """`ztunnel-py canary run|status`."""
    sub = parser.add_subparsers(dest="canary_command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _prefix(common)
    common.add_argument(
        "--state-dir", default=None, metavar="DIR", help="the testbed's state directory"
    )
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the canary controller on the testbed's Canary objects",
        description="Follow every Canary (flagger.app/v1beta1) applied to the testbed: shadow "
        "traffic to the new version first (analysis.mirror), then stepWeight by stepWeight up "
        "to maxWeight, then all traffic to it, each step gated by the analysis metrics read "
        "from Prometheus with PromQL; failed checks up to the threshold roll back to the "
        "primary. Weights are written as a VirtualService and a DestinationRule through the "
        "control plane; the status (phase, weights, each step's metric values and decision) "
        "is written back into the Canary.",
    )
    run.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="the Prometheus to query (default: the testbed's, http://10.250.0.3:9090)",
    )
    run.add_argument(
        "--until-done",
        action="store_true",
        help="return once every Canary has finished: status 0 if all were promoted, 1 if one "
        "failed (else run until interrupted)",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="give up after this long with status 2 (default: never)",
    )
    run.add_argument(
        "--resync",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to look for new or deleted Canaries (default: 1)",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="show each Canary's phase, weights and steps",
        description="Show every Canary: its phase, the primary/canary weights, failed checks, "
        "and its last steps with each metric's value against its threshold and the decision.",
    )
    status.add_argument("--json", action="store_true", help="the Canary objects as JSON")
    status.add_argument(
        "--steps", type=int, default=20, metavar="N", help="steps shown per Canary (default: 20)"
    )
