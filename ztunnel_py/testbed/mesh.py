"""Starts the mesh in a testbed: the control plane, one agent per node, then enrolls the pods.

The commands and their readiness signals are the contract with `controlplane` and `agent`:

- `ztunnel-py controlplane run --data-dir DIR --listen 10.250.0.2:15012 --serving-ip 10.250.0.2
  --monitoring 10.250.0.2:15014 --config-dir STATE/config` in `<prefix>cp` (it watches the
  Kubernetes YAML the testbed writes there, `resources.py`); ready once DIR/ca/root-cert.pem
  exists and the port accepts TCP. With `controlplane_ipv6` the addresses are
  `[fd00:10:250::2]:15012` and `[fd00:10:250::2]:15014` (`Topology.controlplane_address`);
- `ztunnel-py controlplane node-token NODE --data-dir DIR` prints node NODE's CA credential;
- `ztunnel-py agent --node NODE --xds-address ADDRESS --ca-address ADDRESS (that address)
  --ca-root-cert DIR/ca/root-cert.pem --auth-token TOKENFILE --enroll-socket
  NODEDIR/ztunnel.sock --state-dir NODEDIR --bpf-pin-root
  /sys/fs/bpf/ztunnel-py/testbed/<prefix><node> --dns-resolv-conf STATE/dns/resolv.conf` in
  `<prefix><node>` with `--mesh-config STATE/mesh/mesh` (the CA root also verifies the xDS
  server; the resolv.conf names the cluster DNS, which the DNS proxy forwards to; the mesh
  config is ConfigMap istio-system/istio's `mesh` key, mirrored there by `testbed apply`);
  ready when `GET 127.0.0.1:15021/healthz/ready` in the node's namespace answers 200 (held until
  the first workload xDS responses are applied);
- every pod then goes through `ztunnel-py cni ADD` (`runtime.py`), which enrolls the pods of
  ambient namespaces with their node's agent; the testbed then annotates each enrolled Pod
  `ambient.istio.io/redirection: enabled` (as Istio's CNI agent patches it) and waits until every
  agent's `/config_dump` (127.0.0.1:15000 in the node's namespace) shows those workloads as
  HBONE: the control plane sends a pod as HBONE only once it is redirected. `down` runs
  `ztunnel-py cni DEL` for every pod before it stops the agents, and the annotations go.

- a waypoint pod (`testbed apply` of a Gateway of class istio-waypoint, `waypoints.py`) runs
  `ztunnel-py waypoint run --node NODE --xds-address ADDRESS --ca-address ADDRESS --ca-root-cert
  DIR/ca/root-cert.pem --auth-token <its node's token file> --instance-ip IP --pod-name POD
  --pod-namespace NS --service-account GATEWAY --gateway-name GATEWAY --dns-resolv-conf
  STATE/dns/resolv.conf` in the pod's namespace;
  ready when `GET 127.0.0.1:15021/healthz/ready` there answers 200 (held until its first xDS
  responses, workload and L7 types, are applied; its certificate is fetched meanwhile).

An agent restarted with `start_agent` gets the same command line; it re-enrolls its pods from
its own saved state, so the plugin is not run again.

With an image (`testbed up --image`), every one of these processes runs from the image instead
(`image.py`: the same arguments, the pins under the bpffs's mount point inside), and each node
also runs `ztunnel-py cni-node` from it: it installs the host shim into the node's simulated
host root, chained after the primary configuration the testbed writes there; enrollment then
goes through that shim (`runtime.py`), as a runtime on a node would run it.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import ADMIN_PORT, READINESS_PORT
from ztunnel_py.testbed import clusterdns, image, namespaces, resources, runtime
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord, log_tail, wait_for
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import NodePlan, Topology
from ztunnel_py.testbed.waypoints import WaypointPlan

CONTROLPLANE = "controlplane"
MESH_CONFIGMAP = ("istio-system", "istio")

Launch = Callable[[ProcessRecord], None]
Progress = Callable[[str], None]


def ztunnel_py(*args: str) -> list[str]:
    """argv running the `ztunnel-py` CLI with this interpreter (the venv's, not PATH's)."""
    return [sys.executable, "-m", "ztunnel_py.cli", *args]


def command(state: State, role: str, *args: str) -> list[str]:
    """argv running `ztunnel-py ARGS` as process `role`: from this virtual environment, or from
    the testbed's image in a working container of its own."""
    if state.image is None:
        return ztunnel_py(*args)
    name = image.container_name(state.prefix, role)
    image.create_container(state.image, name)
    return image.run_argv(name, state.state_dir, list(args))


def agent_name(node: str) -> str:
    return f"agent/{node}"


def cni_node_name(node: str) -> str:
    return f"cni-node/{node}"


def root_cert(state: State) -> str:
    return str(state.controlplane_dir / "ca" / "root-cert.pem")


def enroll_socket(state: State, node: str) -> str:
    return str(state.node_dir(node) / "ztunnel.sock")


def bpf_pin_root(state: State, node: str) -> str:
    """Each node's agent pins its capture programs apart: the nodes share this machine's bpffs."""
    return f"/sys/fs/bpf/ztunnel-py/testbed/{state.prefix}{node}"


def _pin_root_arg(state: State, node: str) -> str:
    """The pin root as the agent sees it (from an image, the bpffs is mounted elsewhere)."""
    host = bpf_pin_root(state, node)
    if state.image is None:
        return host
    return image.BPFFS + host.removeprefix("/sys/fs/bpf")


def token_file(state: State, node: str) -> str:
    return str(state.node_dir(node) / "token")


def _tcp_open(ns: str, address: SocketAddr) -> bool:
    def probe() -> bool:
        try:
            with socket.create_connection((str(address.host), address.port), timeout=1.0):
                return True
        except OSError:
            return False

    return namespaces.run_in(ns, probe)


def http_ready(ns: str) -> bool:
    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", READINESS_PORT, timeout=1.0)
        try:
            conn.request("GET", "/healthz/ready")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return namespaces.run_in(ns, probe)


def hbone_workloads(ns: str) -> set[str] | None:
    """The uids of the HBONE workloads in the `/config_dump` of the agent in netns `ns`; None
    while it does not answer."""
    protocols = workload_protocols(ns)
    if protocols is None:
        return None
    return {uid for uid, protocol in protocols.items() if protocol == "HBONE"}


def workload_protocols(ns: str) -> dict[str, str] | None:
    """Every workload's protocol by uid in the `/config_dump` of the agent in netns `ns`; None
    while it does not answer."""

    def probe() -> dict[str, str] | None:
        conn = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=2.0)
        try:
            conn.request("GET", "/config_dump")
            response = conn.getresponse()
            if response.status != 200:
                return None
            dump = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()
        return {w["uid"]: w.get("protocol", "") for w in dump.get("workloads") or ()}

    return namespaces.run_in(ns, probe)


def issue_token(state: State, node: NodePlan) -> None:
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
    start_controlplane(topology, state, launch, progress, timeout)

    agents: list[tuple[NodePlan, ProcessRecord]] = []
    started = time.monotonic()
    for node in topology.nodes:
        issue_token(state, node)
        runtime.write_config(topology, state, node, enroll_socket(state, node.name))
        record = agent_record(state, node, topology.controlplane_address)
        launch(record)
        agents.append((node, record))
    for node, record in agents:
        wait_agent_ready(node, record, timeout)
        progress(
            f"  agent {node.name} ready {time.monotonic() - started:.1f} s after its start "
            f"(pid {record.pid}, log {record.log})"
        )
    if state.image is not None:
        start_cni_nodes(topology, state, launch, progress, timeout)
    enroll(topology, state, progress, timeout, [record for _, record in agents])


def start_cni_nodes(
    topology: Topology, state: State, launch: Launch, progress: Progress, timeout: float
) -> None:
    """`ztunnel-py cni-node` from the image on every node, installing into its host root."""
    started: list[tuple[NodePlan, ProcessRecord]] = []
    for node in topology.nodes:
        runtime.write_primary_config(state, node.name)
        static = runtime.network_config(topology, enroll_socket(state, node.name), node)
        record = ProcessRecord(
            name=cni_node_name(node.name),
            netns=node.netns,
            argv=command(
                state,
                cni_node_name(node.name),
                "cni-node",
                "--cni-bin-dir",
                str(runtime.cni_bin_dir(state, node.name)),
                "--cni-conf-dir",
                str(runtime.cni_conf_dir(state, node.name)),
                "--socket",
                str(runtime.cni_node_socket(state, node.name)),
                "--shim",
                image.SHIM,
                "--enroll-socket",
                enroll_socket(state, node.name),
                "--plugin-config",
                json.dumps({k: static[k] for k in ("namespaceLabels", "pods")}),
                "--recheck",
                "1",
            ),
            log=str(state.log_dir / f"cni-node-{node.name}.log"),
        )
        launch(record)
        started.append((node, record))
    for node, record in started:
        wait_for(
            functools.partial(runtime.chained, state, node.name),
            [record],
            timeout,
            f"the CNI node pod of {node.name} to install the plugin",
        )
        progress(
            f"  CNI node {node.name}: shim in {runtime.cni_bin_dir(state, node.name)}, chained "
            f"in {runtime.cni_conf_dir(state, node.name)} (pid {record.pid}, log {record.log})"
        )


def start_controlplane(
    topology: Topology, state: State, launch: Launch, progress: Progress, timeout: float
) -> None:
    cp = controlplane_record(topology, state)
    launch(cp)
    wait_controlplane_ready(topology, state, cp, timeout)
    progress(
        f"  control plane ready on {topology.controlplane_address} (pid {cp.pid}, log {cp.log})"
    )


def controlplane_record(topology: Topology, state: State) -> ProcessRecord:
    """How the control plane runs (the same command line for every start)."""
    return ProcessRecord(
        name=CONTROLPLANE,
        netns=topology.cp_netns,
        argv=command(
            state,
            CONTROLPLANE,
            CONTROLPLANE,
            "run",
            "--data-dir",
            str(state.controlplane_dir),
            "--listen",
            str(topology.controlplane_address),
            "--serving-ip",
            *topology.controlplane_ips,
            "--monitoring",
            str(topology.controlplane_monitoring),
            "--config-dir",
            str(state.config_dir),
        ),
        log=str(state.log_dir / "controlplane.log"),
    )


def wait_controlplane_ready(
    topology: Topology, state: State, record: ProcessRecord, timeout: float
) -> None:
    wait_for(
        lambda: (
            os.path.exists(root_cert(state))
            and _tcp_open(topology.cp_netns, topology.controlplane_address)
        ),
        [record],
        timeout,
        f"the control plane to serve {topology.controlplane_address}",
    )


def agent_record(state: State, node: NodePlan, controlplane: SocketAddr) -> ProcessRecord:
    """How the agent of `node` runs (the same command line for every start)."""
    return ProcessRecord(
        name=agent_name(node.name),
        netns=node.netns,
        argv=command(
            state,
            agent_name(node.name),
            "agent",
            "--node",
            node.name,
            "--xds-address",
            str(controlplane),
            "--ca-address",
            str(controlplane),
            "--ca-root-cert",
            root_cert(state),
            "--auth-token",
            token_file(state, node.name),
            "--enroll-socket",
            enroll_socket(state, node.name),
            "--state-dir",
            str(state.node_dir(node.name)),
            "--secret-ttl",
            state.secret_ttl,
            "--bpf-pin-root",
            _pin_root_arg(state, node.name),
            "--dns-resolv-conf",
            str(clusterdns.agent_resolv_conf(state)),
            "--mesh-config",
            str(mesh_config_file(state)),
        ),
        log=agent_log(state, node.name),
    )


def waypoint_name(waypoint: WaypointPlan) -> str:
    return f"waypoint/{waypoint.namespace}/{waypoint.gateway}"


def waypoint_record(
    state: State, waypoint: WaypointPlan, controlplane: SocketAddr
) -> ProcessRecord:
    """How the waypoint pod's proxy runs: with its node's credential, as the agents do."""
    return ProcessRecord(
        name=waypoint_name(waypoint),
        netns=waypoint.netns,
        argv=command(
            state,
            waypoint_name(waypoint),
            "waypoint",
            "run",
            "--node",
            waypoint.node,
            "--xds-address",
            str(controlplane),
            "--ca-address",
            str(controlplane),
            "--ca-root-cert",
            root_cert(state),
            "--auth-token",
            token_file(state, waypoint.node),
            "--secret-ttl",
            state.secret_ttl,
            "--instance-ip",
            waypoint.ip,
            "--pod-name",
            waypoint.name,
            "--pod-namespace",
            waypoint.namespace,
            "--service-account",
            waypoint.service_account,
            "--gateway-name",
            waypoint.gateway,
            # the pod's resolv.conf: a process started with nsenter sees the machine's
            "--dns-resolv-conf",
            str(clusterdns.agent_resolv_conf(state)),
        ),
        log=str(state.log_dir / f"waypoint-{waypoint.namespace}-{waypoint.gateway}.log"),
    )


def mesh_config_file(state: State) -> Path:
    """Where the agents read Istio's MeshConfig: the `mesh` key of ConfigMap
    istio-system/istio, as a kubelet mounts it (`sync_mesh_config` keeps it current)."""
    return state.state_dir / "mesh" / "mesh"


def sync_mesh_config(state: State) -> None:
    """Mirror the applied `istio` ConfigMap's `mesh` key into the agents' file."""
    path = mesh_config_file(state)
    for document in resources.documents(state.config_dir):
        meta, data = document.get("metadata"), document.get("data")
        if (
            document.get("kind") == "ConfigMap"
            and isinstance(meta, dict)
            and (meta.get("namespace"), meta.get("name")) == MESH_CONFIGMAP
            and isinstance(data, dict)
            and isinstance(data.get("mesh"), str)
        ):
            clusterdns.write_file(path, data["mesh"])
            return
    path.unlink(missing_ok=True)


def agent_log(state: State, node: str) -> str:
    return str(state.log_dir / f"agent-{node}.log")


def wait_agent_ready(node: NodePlan, record: ProcessRecord, timeout: float) -> None:
    wait_for(
        functools.partial(http_ready, node.netns),
        [record],
        timeout,
        f"the agent of {node.name} to be ready",
    )


def enroll(
    topology: Topology,
    state: State,
    progress: Progress,
    timeout: float = 60.0,
    watched: Sequence[ProcessRecord] = (),
) -> None:
    """`ztunnel-py cni ADD` for every pod, as the runtime of each node would run it; then the
    enrolled pods are marked redirected and this waits (up to `timeout`, failing early if a
    `watched` process exits) until every agent sees them as HBONE."""
    failures = []
    for outcome in runtime.invoke(topology, state, "ADD", list(topology.pods)):
        error = outcome.error()
        if error is None and _result_ips(outcome.stdout) != list(outcome.pod.ips):
            error = f"the plugin's result does not carry the pod's IPs: {outcome.stdout!r}"
        if error is not None:
            log = agent_log(state, outcome.pod.node)
            failures.append(
                f"CNI ADD of pod {outcome.pod.name} on {outcome.pod.node} failed: {error}; "
                f"last lines of {log}:\n{log_tail(log)}"
            )
    if failures:
        raise TestbedError("\n".join(failures))
    for node in topology.nodes:
        pods = topology.pods_on(node.name)
        left_out = [p.name for p in pods if not p.ambient]
        progress(
            f"  CNI ADD for {len(pods)} pods on {node.name}: "
            f"{len(pods) - len(left_out)} enrolled with its agent"
            + (f", not {', '.join(left_out)} (namespace not ambient)" if left_out else "")
        )
    enrolled = [p for p in topology.pods if p.ambient]
    resources.set_redirection(state.config_dir, enrolled, True)
    expected = {p.uid for p in enrolled}
    wait_for(
        lambda: all(expected <= (hbone_workloads(node.netns) or set()) for node in topology.nodes),
        watched,
        timeout,
        f"every agent to see the {len(expected)} enrolled pods as HBONE",
    )
    progress(f"  {len(expected)} pods marked redirected; every agent sees them as HBONE")


def _result_ips(stdout: str) -> list[str] | None:
    """The addresses of a CNI result (the pod's IPs, as the plugin passed them through)."""
    try:
        return [str(ip["address"]).split("/")[0] for ip in json.loads(stdout)["ips"]]
    except (ValueError, KeyError, TypeError):
        return None


def unenroll(topology: Topology, state: State, progress: Progress) -> None:
    """`ztunnel-py cni DEL` for every pod still there (best effort: warnings, never errors)."""
    pods = [
        p
        for p in topology.pods
        if namespaces.exists(p.netns)
        and namespaces.exists(topology.node(p.node).netns)
        and runtime.config_path(state, p.node).exists()
        and (state.image is None or runtime.chained(state, p.node))
    ]
    released = []
    for outcome in runtime.invoke(topology, state, "DEL", pods):
        error = outcome.error()
        if error is not None:
            progress(f"warning: CNI DEL of pod {outcome.pod.name} failed: {error}")
        else:
            released.append(outcome.pod)
    resources.set_redirection(state.config_dir, released, False)
