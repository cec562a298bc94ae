"""The `ztunnel-py` command line: argument parsing only; each subcommand calls one entry point.

Entry points are imported lazily so `ztunnel-py --help` stays fast and a subcommand only pays for
the libraries it uses (bcc, grpc, ...).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ztunnel_py import __version__

Handler = Callable[[argparse.Namespace], int]


def _agent(args: argparse.Namespace) -> int:
    from ztunnel_py.agent.app import main as agent_main

    return agent_main(args)


def _sidecar(args: argparse.Namespace) -> int:
    from ztunnel_py.agent.sidecar import main as sidecar_main

    return sidecar_main(args)


def _waypoint(args: argparse.Namespace) -> int:
    if args.waypoint_command != "run":
        from ztunnel_py.ctl.waypoint import main as waypoint_ctl_main

        return waypoint_ctl_main(args)
    from ztunnel_py.waypoint.app import main as waypoint_main

    return waypoint_main(args)


def _zc(args: argparse.Namespace) -> int:
    from ztunnel_py.ctl.cli import zc

    return zc(args)


def _proxy_status(args: argparse.Namespace) -> int:
    from ztunnel_py.ctl.cli import proxy_status

    return proxy_status(args)


def _canary(args: argparse.Namespace) -> int:
    from ztunnel_py.ctl.canary import main as canary_main

    return canary_main(args)


def _dashboard(args: argparse.Namespace) -> int:
    from ztunnel_py.ctl.dashboard import main as dashboard_main

    return dashboard_main(args)


def _controlplane(args: argparse.Namespace) -> int:
    from ztunnel_py.controlplane.app import main as cp_main

    return cp_main(args)


def _cni(args: argparse.Namespace) -> int:
    from ztunnel_py.cni import main as cni_main

    return cni_main(args)


def _cni_node(args: argparse.Namespace) -> int:
    from ztunnel_py.cni.node import main as cni_node_main

    return cni_node_main(args)


def _testbed(args: argparse.Namespace) -> int:
    from ztunnel_py.testbed.cli import main as testbed_main

    return testbed_main(args)


def _demo(args: argparse.Namespace) -> int:
    from ztunnel_py.testbed.demo import main as demo_main

    return demo_main(args)


def _bpf(args: argparse.Namespace) -> int:
    from ztunnel_py.redirect.compile import bundle_command

    return bundle_command(args.out, args.bpf_dir)


def _bench(args: argparse.Namespace) -> int:
    from ztunnel_py.bench.cli import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ztunnel-py",
        description="Istio-ambient-style service mesh: node agent, waypoint, control plane, "
        "testbed.",
    )
    parser.add_argument("--version", action="version", version=f"ztunnel-py {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from ztunnel_py.agent.args import add_agent_arguments, add_sidecar_arguments
    from ztunnel_py.bench.args import add_bench_arguments
    from ztunnel_py.cni.node import add_arguments as add_cni_node_arguments
    from ztunnel_py.controlplane.args import add_controlplane_arguments
    from ztunnel_py.ctl.args import add_canary_commands, add_waypoint_commands
    from ztunnel_py.ctl.cli import add_proxy_status_arguments, add_zc_arguments
    from ztunnel_py.ctl.dashboard import add_arguments as add_dashboard_arguments
    from ztunnel_py.testbed.args import add_demo_arguments, add_testbed_arguments

    p = sub.add_parser(
        "agent",
        help="run the node agent (one per node)",
        description="Run the node agent: per-pod listeners, HBONE mTLS tunnels, L4 policy.",
    )
    add_agent_arguments(p)
    p.set_defaults(handler=_agent)

    p = sub.add_parser(
        "sidecar",
        help="run one pod's proxy in sidecar mode (the benchmark's comparison point)",
        description="Run the mesh's proxy for a single pod, inside that pod's network namespace "
        "(as uid 1337, like istio-proxy), behind Istio-style iptables REDIRECT rules: outbound "
        "on 15001, inbound plaintext on 15006, HBONE on 15008. `ztunnel-py testbed up --mode "
        "sidecar` starts one per pod.",
    )
    add_sidecar_arguments(p)
    p.set_defaults(handler=_sidecar)

    p = sub.add_parser(
        "waypoint",
        help="waypoints: run one (the L7 proxy), or generate, apply, list, delete them",
        description="`run` is the waypoint process itself; generate, apply, list and delete "
        "manage waypoint Gateways as `istioctl waypoint` does (apply, list and delete on the "
        "testbed; generate prints YAML for kubectl).",
    )
    add_waypoint_commands(p)
    p.set_defaults(handler=_waypoint)

    p = sub.add_parser(
        "zc",
        help="a node agent's state, as `istioctl ztunnel-config` shows it",
        description="Read a node agent's admin port (/config_dump, /logging) and print "
        "workloads, services, policies, certificates or connections as istioctl "
        "ztunnel-config does, or -o json|yaml; or show and set its log levels.",
    )
    add_zc_arguments(p)
    p.set_defaults(handler=_zc)

    p = sub.add_parser(
        "proxy-status",
        help="the control plane's xDS clients and what they acknowledged",
        description="Read the control plane's /debug/xds and print each connected agent and "
        "waypoint: its type, its node, per xDS type whether it ACKed the last push (NACKED, "
        "STALE while a push is unanswered), and since when it is connected.",
    )
    add_proxy_status_arguments(p)
    p.set_defaults(handler=_proxy_status)

    p = sub.add_parser(
        "controlplane",
        help="run the bundled control plane (CA, workload xDS)",
        description="Run the bundled control plane, or use its offline tools.",
    )
    add_controlplane_arguments(p)
    p.set_defaults(handler=_controlplane)

    p = sub.add_parser(
        "cni",
        help="the CNI plugin that enrolls pods with the node agent (run by the container runtime)",
        description="A chained CNI plugin (spec 0.3.0 to 1.1.0). The container runtime runs it "
        "after the primary plugin with CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC, VERSION), "
        "CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME) and "
        "CNI_PATH in the environment and the network configuration JSON on stdin. On ADD it "
        "enrolls the pod with the agent on this node when the pod's namespace is labelled "
        "istio.io/dataplane-mode=ambient, then passes prevResult through; on DEL it unenrolls "
        "it. The result, or the CNI error object, is printed on stdout.",
        epilog="Plugin configuration keys: enrollSocket (default /var/run/ztunnel/ztunnel.sock); "
        "kubeconfig (read labels and service accounts from the API server), or namespaceLabels "
        '({"NS": {"label": "value"}}) and pods ({"NS/NAME": {"serviceAccount": "sa", '
        '"labels": {}}}). Try: CNI_COMMAND=VERSION ztunnel-py cni',
    )
    p.set_defaults(handler=_cni)

    p = sub.add_parser(
        "cni-node",
        help="the CNI node pod: installs the plugin on its node and serves the host shim",
        description="Run on every node (the ztunnel-py-cni DaemonSet): copy the host shim "
        "ztunnel-py-cni into the node's CNI bin directory, chain it after the primary plugin in "
        "the node's CNI configuration, and carry out the CNI requests the shim forwards over a "
        "Unix socket (the plugin logic of `ztunnel-py cni`, with the pod's network namespace "
        "passed as a descriptor). SIGTERM removes the entry and the shim again.",
    )
    add_cni_node_arguments(p)
    p.set_defaults(handler=_cni_node)

    p = sub.add_parser(
        "canary",
        help="progressive delivery: release a version behind a Flagger-style Canary",
        description="The canary controller: shadow traffic, a small canary weight, stepped "
        "increases and promotion, gated by the waypoints' metrics in Prometheus, with "
        "automatic rollback; driven by Canary objects (flagger.app/v1beta1) on the testbed.",
    )
    add_canary_commands(p)
    p.set_defaults(handler=_canary)

    p = sub.add_parser(
        "dashboard",
        help="serve the live service topology page (Kiali-style graph) from the mesh's metrics",
        description="Serve a web page drawing the live graph of workloads and services: request "
        "and connection rates, error rates, p99, bytes, mTLS and denied connections, waypoints on "
        "the path, refreshed every few seconds; click a workload for its policies and "
        "certificates (from the node agents' /config_dump). Reads the testbed's Prometheus, or "
        "--prometheus URL.",
    )
    add_dashboard_arguments(p)
    p.set_defaults(handler=_dashboard)

    p = sub.add_parser(
        "testbed",
        help="the netns lab: nodes and pods as network namespaces",
        description="Build, inspect and tear down the network-namespace testbed.",
    )
    add_testbed_arguments(p)
    p.set_defaults(handler=_testbed)

    p = sub.add_parser(
        "demo",
        help="bring up a 2-node mesh, show traffic through it, tear it down",
        description="Bring up a 2-node testbed with the mesh, send traffic through it, report.",
    )
    add_demo_arguments(p)
    p.set_defaults(handler=_demo)

    p = sub.add_parser(
        "bpf",
        help="the capture programs: build their bytecode bundle",
        description="The BPF capture programs ship as a bytecode bundle, loaded by the agent "
        "without a compiler.",
    )
    bpf = p.add_subparsers(dest="bpf_command", metavar="COMMAND", required=True)
    b = bpf.add_parser(
        "bundle",
        help="compile the capture programs with bcc into a bytecode bundle",
        description="Compile bpf/redirect.c with bcc (needs python3-bpfcc, the running "
        "kernel's headers and root: bcc creates maps while compiling) and write the bytecode "
        "bundle the agent loads (its --bpf-bundle; the image ships one in the package).",
    )
    b.add_argument("-o", "--out", type=Path, required=True, metavar="PATH", help="bundle to write")
    b.add_argument(
        "--bpf-dir",
        type=Path,
        metavar="DIR",
        help="holds redirect.c and redirect.h (default: the sources in this package)",
    )
    p.set_defaults(handler=_bpf)

    p = sub.add_parser(
        "bench",
        help="benchmarks (figures printed as ratios to a no-mesh baseline)",
        description="Benchmarks: each figure is shown next to a baseline measured in the same run.",
    )
    add_bench_arguments(p)
    p.set_defaults(handler=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
