"""`ztunnel-py testbed up|down|status|exec|agent|controlplane|prometheus|release|apply|delete`:
parse results in, Testbed calls, text out."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

from ztunnel_py.testbed import prometheus
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.status import PodStatus, ProcessStatus, TestbedStatus
from ztunnel_py.testbed.testbed import Testbed, down
from ztunnel_py.testbed.topology import CLIENT, MODE_NONE


def _say(line: str) -> None:
    print(line, flush=True)


def _up(args: argparse.Namespace) -> int:
    bed = Testbed.up(
        prefix=args.prefix,
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        mode=MODE_NONE if args.no_mesh else args.mode,
        state_dir=args.state_dir,
        progress=_say,
        timeout=args.timeout,
        secret_ttl=args.secret_ttl,
        dual_stack=args.dual_stack,
        controlplane_ipv6=args.controlplane_ipv6,
        image_name=args.image,
        with_prometheus=args.prometheus,
    )
    client = next(p for p in bed.topology.pods if p.role == CLIENT)
    # Without the mesh nothing serves the VIPs (there is no kube-proxy): show a pod IP then.
    vip = bed.topology.service("echo").vip
    far_echo = bed.topology.endpoints("echo")[-1].ip
    # A plain client: the agent (or the pod's sidecar) captures its traffic, no proxy settings.
    curl = f"curl -s http://{vip}/" if bed.state.mesh else f"curl -s http://{far_echo}:8080/"
    flags = "" if args.prefix == "zt-" else f" --prefix {args.prefix}"
    flags += f" --state-dir {args.state_dir}" if args.state_dir else ""
    _say(f"  inspect:   ztunnel-py testbed status{flags}")
    _say(f"  try:       ztunnel-py testbed exec{flags} {client.name} -- {curl}")
    if bed.state.prometheus:
        query = f"{prometheus.url()}/api/v1/query?query=up"
        _say(f"  PromQL:    ztunnel-py testbed exec{flags} prometheus -- curl -s '{query}'")
    _say(f"  remove:    ztunnel-py testbed down{flags}")
    return 0


def _down(args: argparse.Namespace) -> int:
    if not down(args.prefix, args.state_dir, progress=_say):
        _say(f"no testbed {args.prefix} is up; nothing to do")
    return 0


def _agent(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    node: str = args.node
    if args.action == "stop":
        pid = bed.stop_agent(node)
        _say(f"agent {node} stopped (pid {pid})" if pid else f"agent {node} was not running")
    elif args.action == "kill":
        pid = bed.kill_agent(node)
        _say(f"agent {node} killed (pid {pid})" if pid else f"agent {node} was not running")
    else:
        started = time.monotonic()
        record = bed.start_agent(node, timeout=args.timeout)
        _say(
            f"agent {node} ready in {time.monotonic() - started:.1f} s (pid {record.pid}, log "
            f"{record.log}); it re-enrolls its pods from its saved state"
        )
    return 0


def _controlplane(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    if args.action == "stop":
        pid = bed.stop_controlplane()
        _say(
            f"control plane stopped (pid {pid}); the agents keep their last configuration"
            if pid
            else "the control plane was not running"
        )
    else:
        started = time.monotonic()
        record = bed.start_controlplane(timeout=args.timeout)
        _say(
            f"control plane serving in {time.monotonic() - started:.1f} s (pid {record.pid}, "
            f"log {record.log}); the agents reconnect by themselves"
        )
    return 0


def _release(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    record = bed.release_pod_app(args.pod, fail_percent=args.fail_percent, delay_ms=args.delay_ms)
    _say(
        f"pod {args.pod} serves a new release (pid {record.pid}): {args.fail_percent:g}% 500s, "
        f"{args.delay_ms} ms added"
    )
    return 0


def _prometheus(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    if args.action == "stop":
        pid = bed.stop_prometheus()
        _say(f"Prometheus stopped (pid {pid})" if pid else "Prometheus was not running")
    else:
        record = bed.start_prometheus()
        _say(f"Prometheus ready on {prometheus.url()} (pid {record.pid}, log {record.log})")
    return 0


def _read_input(filename: str) -> str:
    if filename == "-":
        return sys.stdin.read()
    try:
        with open(filename, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TestbedError(f"cannot read {filename}: {exc}") from None


def _apply(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    source = "<stdin>" if args.filename == "-" else args.filename
    bed.apply(
        _read_input(args.filename),
        source,
        progress=_say,
        timeout=args.timeout,
        dry_run=args.dry_run,
    )
    if args.dry_run == "none":
        netns = bed.topology.cp_netns
        _say(
            "what the control plane makes of it shows on its /debug/config "
            f"(`ip netns exec {netns} curl -s {bed.controlplane_debug_url}`) and in its log "
            f"({bed.state.log_dir / 'controlplane.log'})"
        )
    return 0


def _delete(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    source = "<stdin>" if args.filename == "-" else args.filename
    bed.delete(_read_input(args.filename), source, progress=_say)
    return 0


def _alive(pid: int | None, alive: bool) -> str:
    if pid is None:
        return "-"
    return f"pid {pid} " + ("running" if alive else "EXITED")


def _process(proc: ProcessStatus) -> str:
    return _alive(proc.pid, proc.alive)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _mesh_column(pod: PodStatus) -> str:
    if pod.enrolled:
        return "enrolled"
    if pod.sidecar is not None:
        return f"sidecar {_process(pod.sidecar)}"
    return "-"


def format_status(status: TestbedStatus) -> str:
    """The human-readable form of `Testbed.status()`."""
    phase = (
        "up"
        if status.complete
        else "NOT COMPLETE (still coming up, or `up` was interrupted: run `testbed down`)"
    )
    mesh = {"ambient": "ambient mode", "sidecar": "sidecar mode", "none": "no mesh"}[status.mode]
    mesh += ", dual stack" if status.dual_stack else ""
    cp = status.controlplane
    lines = [
        f"testbed {status.prefix}: {phase}, {mesh}; state {status.state_dir}",
        f"fabric         {status.fabric.netns}  {status.fabric.subnet}",
        f"control plane  {cp.netns}  {cp.ip}"
        + (f"  {_alive(cp.pid, cp.alive)}  log {cp.log}" if cp.pid is not None else ""),
        *(
            [
                f"prometheus     {status.prometheus.netns}  {status.prometheus.url}  "
                f"{_alive(status.prometheus.pid, status.prometheus.alive)}  "
                f"log {status.prometheus.log}"
            ]
            if status.prometheus is not None
            else []
        ),
        "namespaces     "
        + ", ".join(
            ns.name + "".join(f" {k}={v}" for k, v in ns.labels.items()) for ns in status.namespaces
        ),
        "",
    ]
    rows = [["NODE", "NETNS", "IP", "POD CIDR", "AGENT", "LOG"]]
    for node in status.nodes:
        agent = node.agent
        rows.append(
            [node.name, node.netns, node.ip, node.pod_cidr, _process(agent), agent.log or "-"]
        )
    lines += [*_table(rows), ""]
    rows = [
        ["POD", "NAMESPACE", "SERVICE ACCOUNT", "NODE", "IP", "MESH", "NETNS", "HTTP", "IPERF3"]
    ]
    for pod in status.pods:
        http, iperf = pod.processes
        rows.append(
            [
                pod.name,
                pod.namespace,
                pod.service_account,
                pod.node,
                " ".join(pod.ips),
                _mesh_column(pod),
                pod.netns,
                _process(http),
                _process(iperf),
            ]
        )
    lines += [*_table(rows), ""]
    rows = [["SERVICE", "NAMESPACE", "VIP", "PORTS", "ENDPOINTS"]]
    for svc in status.services:
        ports = ",".join(f"{p.name}:{p.port}->{p.target_port}" for p in svc.ports)
        rows.append([svc.name, svc.namespace, svc.vip, ports, ",".join(svc.endpoints)])
    lines += _table(rows)
    if status.waypoints:
        rows = [["WAYPOINT", "NAMESPACE", "POD", "NODE", "IP", "VIP", "NETNS", "PROXY", "LOG"]]
        for wp in status.waypoints:
            rows.append(
                [
                    wp.gateway,
                    wp.namespace,
                    wp.pod,
                    wp.node,
                    " ".join(wp.ips),
                    " ".join(wp.vips),
                    wp.netns,
                    _process(wp.process),
                    wp.log or "-",
                ]
            )
        lines += ["", *_table(rows)]
    lines += [
        "",
        f"logs in {status.state_dir}/logs; Kubernetes resources in {status.config_dir} "
        f"(control plane: {cp.debug_config})",
    ]
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    status = Testbed.attach(args.prefix, args.state_dir).status()
    print(json.dumps(status.to_json(), indent=2) if args.json else format_status(status))
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    bed = Testbed.attach(args.prefix, args.state_dir)
    argv = bed.exec_argv(args.pod, cmd)
    if not cmd:
        raise TestbedError(
            f"no command given; e.g. `ztunnel-py testbed exec {args.pod} -- ip addr`"
        )
    code = subprocess.run(argv, check=False).returncode
    # A command killed by a signal reports -N; shells report that as 128+N.
    return 128 - code if code < 0 else code


_ACTIONS = {
    "up": _up,
    "down": _down,
    "status": _status,
    "exec": _exec,
    "agent": _agent,
    "controlplane": _controlplane,
    "prometheus": _prometheus,
    "release": _release,
    "apply": _apply,
    "delete": _delete,
}


def main(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.testbed_command](args)
    except TestbedError as exc:
        print(f"ztunnel-py testbed {args.testbed_command}: {exc}", file=sys.stderr)
        return 1
