"""Arguments of `ztunnel-py testbed` (up, down, status, exec, agent, controlplane, apply, delete)
and `ztunnel-py demo`."""

from __future__ import annotations

import argparse
import os

from ztunnel_py.testbed.topology import MODE_AMBIENT, MODES

STATE_DIR_ENV = "ZTUNNEL_TESTBED_DIR"
DEFAULT_PREFIX = "zt-"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="name prefix of the testbed's network namespaces; must start with 'zt' "
        "(default: %(default)s)",
    )
    common.add_argument(
        "--state-dir",
        default=os.environ.get(STATE_DIR_ENV) or None,
        metavar="DIR",
        help=f"where the testbed keeps its state, logs and config (env {STATE_DIR_ENV}; "
        "default: /run/ztunnel-py/testbed/PREFIX)",
    )
    return common


def add_testbed_arguments(parser: argparse.ArgumentParser) -> None:
    common = _common()
    sub = parser.add_subparsers(dest="testbed_command", metavar="ACTION", required=True)

    up = sub.add_parser(
        "up",
        parents=[common],
        help="create the namespaces, start pod servers and (unless --mode none) the mesh",
        description="Create the fabric, control plane, node and pod network namespaces, start "
        "an HTTP server (:8080) and iperf3 (:5201) in every pod and then, in ambient mode, the "
        "control plane and one agent per node and run the CNI plugin (`ztunnel-py cni`) for "
        "every pod, which enrolls the pods of ambient namespaces; in sidecar mode, the control "
        "plane and, in every pod of those namespaces, Istio-style iptables REDIRECT rules and "
        "a `ztunnel-py sidecar` proxy running as uid 1337. Nothing is added to the machine's own "
        "network namespace.",
    )
    up.add_argument(
        "--nodes", type=int, default=2, metavar="N", help="number of nodes (default: 2)"
    )
    up.add_argument(
        "--pods-per-node",
        type=int,
        default=2,
        metavar="M",
        help="pods on each node, at least 2: an echo server and a client (default: 2)",
    )
    up.add_argument(
        "--mode",
        choices=MODES,
        default=MODE_AMBIENT,
        help="ambient: node agents capture the pods with BPF (default); sidecar: a proxy per "
        "pod behind iptables REDIRECT, as Istio's sidecar mode; none: no mesh at all",
    )
    up.add_argument(
        "--no-mesh",
        action="store_true",
        help="the same as --mode none: only the network and the pod servers",
    )
    up.add_argument(
        "--dual-stack",
        action="store_true",
        help="give nodes and pods IPv6 addresses too (fd00:10:244:<node>::/64 for pods)",
    )
    up.add_argument(
        "--controlplane-ipv6",
        action="store_true",
        help="with --dual-stack: the control plane serves on [fd00:10:250::2]:15012 only, and "
        "the proxies reach it there",
    )
    up.add_argument(
        "--image",
        metavar="IMAGE",
        help="run the control plane, the agents, the CNI node pods and waypoints from this "
        "local container image (scripts/build-image.sh builds one), in buildah's chroot "
        "isolation with the mounts the DaemonSets declare; enrollment then goes through the "
        "installed CNI host shim (ambient mode only)",
    )
    up.add_argument(
        "--prometheus",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run Prometheus (Debian's package) in a network namespace of its own, "
        "10.250.0.3:9090, scraping every agent, waypoint, sidecar and the control plane every "
        "2 s; `testbed exec prometheus -- curl ...` reaches it (default: on in ambient mode, "
        "where it adds 0.25 s and about 45 MB)",
    )
    up.add_argument(
        "--secret-ttl",
        default="24h",
        metavar="DURATION",
        help="lifetime of the workload certificates the agents request, e.g. 60s "
        "(default: %(default)s); they rotate at half-life",
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for each process to become ready (default: 60)",
    )

    sub.add_parser(
        "down",
        parents=[common],
        help="stop the testbed's processes and remove its namespaces and files",
        description="Stop every process the testbed started, delete its network namespaces and "
        "its state directory. Safe to run repeatedly and after a crashed `up`.",
    )

    status = sub.add_parser(
        "status",
        parents=[common],
        help="show nodes, pods, services and processes",
        description="Show the testbed: nodes, pods (namespace, IP, service account), services "
        "(VIP, ports), the control plane, and each process with its pid and log file.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts and tests")

    run = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command inside a pod's network namespace",
        description="Run CMD inside the network namespace of POD (or of a node, e.g. node1) "
        "with `ip netns exec`. Stdin, stdout and stderr pass through; the exit status is CMD's.",
        usage="%(prog)s [-h] [--prefix P] [--state-dir DIR] POD -- CMD [ARG...]",
    )
    run.add_argument("pod", metavar="POD", help="pod name as shown by `testbed status`")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD", help="command and arguments")

    agent = sub.add_parser(
        "agent",
        parents=[common],
        help="stop, start or kill one node's agent",
        description="stop: SIGTERM the agent of NODE and wait for it to exit; it drains first "
        "(open connections get up to 5 s to end; SIGKILL after 8 s). kill: SIGKILL it, as a "
        "crash would. start: run it again with the command line `up` gave it and wait until it "
        "is ready; it re-enrolls its pods from its own saved state (the CNI plugin is not run "
        "again). The state file follows every change.",
    )
    agent.add_argument("node", metavar="NODE", help="node name, e.g. node1")
    agent.add_argument("action", choices=("stop", "start", "kill"), help="what to do")
    agent.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long `start` waits for the agent to be ready (default: 60)",
    )

    controlplane = sub.add_parser(
        "controlplane",
        parents=[common],
        help="stop or start the control plane",
        description="stop: SIGTERM the control plane and wait for it to exit (SIGKILL after "
        "8 s); the agents keep serving with their last configuration and certificates. start: "
        "run it again with the command line `up` gave it (same CA) and wait until it serves; "
        "the agents reconnect and resync by themselves.",
    )
    controlplane.add_argument("action", choices=("stop", "start"), help="what to do")
    controlplane.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long `start` waits for the control plane to serve (default: 60)",
    )

    release = sub.add_parser(
        "release",
        parents=[common],
        help="restart a pod's app as a release that fails or is slow (or a healthy one)",
        description="Restart the app of POD, as rolling out a new image of it would: with "
        "--fail-percent it answers 500 to that share of requests, with --delay-ms it adds that "
        "delay to every answer; without either it is a healthy release again.",
    )
    release.add_argument("pod", metavar="POD", help="pod name, e.g. echo-2")
    release.add_argument("--fail-percent", type=float, default=0.0, metavar="P")
    release.add_argument("--delay-ms", type=int, default=0, metavar="MS")

    prom = sub.add_parser(
        "prometheus",
        parents=[common],
        help="stop or start the testbed's Prometheus",
        description="stop: SIGTERM the testbed's Prometheus and wait for it to exit (queries "
        "then fail: a canary analysis halts). start: run it again with the same command line "
        "and storage, and wait until it is ready.",
    )
    prom.add_argument("action", choices=("stop", "start"), help="what to do")

    for action, verb, effect, waypoint in (
        (
            "apply",
            "add or replace",
            "writes each object into",
            "A Gateway of class istio-waypoint also gets its waypoint pod (own network namespace "
            "and IP, running `ztunnel-py waypoint run`) and Service, as istiod's deployment "
            "controller would have them created; the command returns once the pod is ready.",
        ),
        (
            "delete",
            "remove",
            "removes each object from",
            "Deleting a waypoint Gateway stops its pod and removes its Pod and Service.",
        ),
    ):
        files = sub.add_parser(
            action,
            parents=[common],
            help=f"{verb} Kubernetes objects (kubectl {action} -f style)",
            description=f"Read Kubernetes YAML (multi-document) from FILE and {effect} the "
            "directory the control plane watches (STATE_DIR/config), one file per object named "
            "after its kind, namespace and name. "
            + (
                "The objects are first checked by the control plane's own validation, with "
                "what the directory holds: if any is rejected, nothing is written and the exit "
                "status is 1. "
                if action == "apply"
                else ""
            )
            + waypoint,
        )
        files.add_argument(
            "-f",
            "--filename",
            required=True,
            metavar="FILE",
            help="the YAML file, or - for standard input",
        )
        if action == "apply":
            files.add_argument(
                "--dry-run",
                nargs="?",
                const="client",
                choices=("none", "client", "server"),
                default="none",
                help="check, write nothing (as kubectl): client checks the objects alone, server "
                "with the directory's contents too (default of --dry-run alone: client)",
            )
            files.add_argument(
                "--timeout",
                type=float,
                default=60.0,
                metavar="SECONDS",
                help="how long to wait for a waypoint pod to be ready (default: 60)",
            )


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        metavar="IMAGE",
        help="run the mesh from this local container image (as `testbed up --image`)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the testbed up afterwards (remove it with `ztunnel-py testbed down`)",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="name prefix of the demo's network namespaces (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        default=5,
        metavar="N",
        help="length of the iperf3 transfer across nodes (default: %(default)s)",
    )
