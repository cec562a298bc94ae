"""Starts the mesh in a testbed: the control plane, one agent per node, then enrolls every pod.

The commands and their readiness signals are the contract with `controlplane` and `agent`:

- `ztunnel-py controlplane run --data-dir DIR --listen 10.250.0.2:15012 --serving-ip 10.250.0.2
  --local-config FILE` in `<prefix>cp`; ready once DIR/ca/root-cert.pem exists and the port
  accepts TCP;
- `ztunnel-py controlplane node-token NODE --data-dir DIR` prints node NODE's CA credential;
- `ztunnel-py agent --node NODE --local-config FILE --ca-address 10.250.0.2:15012 --ca-root-cert
  DIR/ca/root-cert.pem --auth-token TOKENFILE --enroll-socket NODEDIR/ztunnel.sock --state-dir
  NODEDIR` in `<prefix><node>`; ready when `GET 127.0.0.1:15021/healthz/ready` in the node's
  namespace answers 200;
- each pod is then enrolled with its node's agent over the enrollment socket (the testbed plays
  the CNI plugin's part).
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Callable

from ztunnel_py.testbed import netns
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord, log_tail, wait_for
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import CONTROLPLANE_IP, NodePlan, Topology

CA_PORT = 15012
READINESS_PORT = 15021
CONTROLPLANE = "controlplane"

Launch = Callable[[ProcessRecord], None]
Progress = Callable[[str], None]


def ztunnel_py(*args: str) -> list[str]:
    """argv running the `ztunnel-py` CLI with this interpreter (the venv's, not PATH's)."""
    return [sys.executable, "-m", "ztunnel_py.cli", *args]


def agent_name(node: str) -> str:
    return f"agent/{node}"


def root_cert(state: State) -> str:
    return str(state.controlplane_dir / "ca" / "root-cert.pem")


def enroll_socket(state: State, node: str) -> str:
    return str(state.node_dir(node) / "ztunnel.sock")


def bpf_pin_root(state: State, node: str) -> str:
    """Each node's agent pins its capture programs apart: the nodes share this machine's bpffs."""
    return f"/sys/fs/bpf/ztunnel-py/testbed/{state.prefix}{node}"


def token_file(state: State, node: str) -> str:
    return str(state.node_dir(node) / "token")


def _tcp_open(ns: str, host: str, port: int) -> bool:
    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            return False

    return netns.run_in(ns, probe)


def _http_ready(ns: str) -> bool:
    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", READINESS_PORT, timeout=1.0)
        try:
            conn.request("GET", "/healthz/ready")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return netns.run_in(ns, probe)


def _issue_token(state: State, node: NodePlan) -> None:
    argv = ztunnel_py(
        CONTROLPLANE, "node-token", node.name, "--data-dir", str(state.controlplane_dir)
    )
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    token = proc.stdout.strip()
    if proc.returncode != 0 or not token:
        raise TestbedError(
            f"`{' '.join(argv)}` failed (status {proc.returncode}): {proc.stderr.strip()}"
        )
    path = token_file(state, node.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def start(
    topology: Topology, state: State, launch: Launch, progress: Progress, timeout: float
) -> None:
    """Start the control plane and the agents, wait until each is ready, enroll the pods."""
    listen = f"{CONTROLPLANE_IP}:{CA_PORT}"
    cp = ProcessRecord(
        name=CONTROLPLANE,
        netns=topology.cp_netns,
        argv=ztunnel_py(
            CONTROLPLANE,
            "run",
            "--data-dir",
            str(state.controlplane_dir),
            "--listen",
            listen,
            "--serving-ip",
            CONTROLPLANE_IP,
            "--local-config",
            str(state.local_config),
        ),
        log=str(state.log_dir / "controlplane.log"),
    )
    launch(cp)
    wait_for(
        lambda: (
            os.path.exists(root_cert(state))
            and _tcp_open(topology.cp_netns, CONTROLPLANE_IP, CA_PORT)
        ),
        [cp],
        timeout,
        f"the control plane to serve {listen}",
    )
    progress(f"  control plane ready on {listen} (pid {cp.pid}, log {cp.log})")

    agents: list[tuple[NodePlan, ProcessRecord]] = []
    for node in topology.nodes:
        _issue_token(state, node)
        node_dir = str(state.node_dir(node.name))
        record = ProcessRecord(
            name=agent_name(node.name),
            netns=node.netns,
            argv=ztunnel_py(
                "agent",
                "--node",
                node.name,
                "--local-config",
                str(state.local_config),
                "--ca-address",
                listen,
                "--ca-root-cert",
                root_cert(state),
                "--auth-token",
                token_file(state, node.name),
                "--enroll-socket",
                enroll_socket(state, node.name),
                "--state-dir",
                node_dir,
                "--secret-ttl",
                state.secret_ttl,
                "--bpf-pin-root",
                bpf_pin_root(state, node.name),
            ),
            log=str(state.log_dir / f"agent-{node.name}.log"),
        )
        launch(record)
        agents.append((node, record))
    for node, record in agents:
        wait_for(
            functools.partial(_http_ready, node.netns),
            [record],
            timeout,
            f"the agent of {node.name} to be ready",
        )
        progress(f"  agent {node.name} ready (pid {record.pid}, log {record.log})")

    from ztunnel_py.agent.enroll_client import EnrollError, enroll_pod

    for node, record in agents:
        for pod in topology.pods_on(node.name):
            try:
                enroll_pod(
                    socket_path=enroll_socket(state, node.name),
                    uid=pod.uid,
                    name=pod.name,
                    namespace=pod.namespace,
                    service_account=pod.service_account,
                    netns_path=pod.netns_path,
                )
            except (EnrollError, OSError) as exc:
                raise TestbedError(
                    f"enrolling pod {pod.name} with the agent of {node.name} failed: {exc}; "
                    f"last lines of {record.log}:\n{log_tail(record.log)}"
                ) from exc
        progress(f"  enrolled {len(topology.pods_on(node.name))} pods with agent {node.name}")
