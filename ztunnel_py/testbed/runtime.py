"""The testbed in the container runtime's seat: it runs `ztunnel-py cni` as kubelet would.

The testbed itself plays the primary CNI plugin (it creates each pod's veth and addresses), so
for every pod it describes that work as a CNI result (`prevResult`: the host and pod
interfaces, the pod's IPs, its routes) and runs the real plugin, chained after it, with the
environment and stdin a runtime gives a plugin:

- environment: CNI_COMMAND, CNI_CONTAINERID (a stable 64-hex id per pod), CNI_NETNS
  (/run/netns/<pod netns>), CNI_IFNAME=eth0, CNI_PATH, and CNI_ARGS with K8S_POD_NAMESPACE,
  K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID and K8S_POD_UID;
- stdin: the node's network configuration (NODEDIR/cni-config.json: the agent's enrollment
  socket, namespace labels, service accounts) plus `name`, `cniVersion` and `prevResult`.

The plugin runs in the node's network namespace, as a runtime runs it in the host's. Whether a
pod is enrolled is the plugin's decision, from the namespace labels the configuration lists.

With an image (`testbed up --image`), the node's CNI node pod has installed the host shim into
the node's simulated host root (NODEDIR/host) and chained it into the configuration list there;
the testbed then does what libcni does with such a list: it executes `CNI_PATH/<type>` (the
shim, CNI_PATH being that root's opt/cni/bin) with our entry as the configuration, plus the
list's `name` and `cniVersion` and the primary plugin's result as `prevResult`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztunnel_py.cni import install
from ztunnel_py.testbed import image, namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import NodePlan, PodPlan, Topology

CNI_VERSION = "1.0.0"
NETWORK_NAME = "testbed"
PLUGIN_TYPE = "ztunnel-py-cni"
PLUGIN_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one plugin run printed and returned."""

    pod: PodPlan
    command: str
    returncode: int
    stdout: str
    stderr: str

    def error(self) -> str | None:
        """The plugin's error in one line, or None if it succeeded."""
        if self.returncode == 0:
            return None
        try:
            body = json.loads(self.stdout)
            text = f"CNI error {body['code']}: {body['msg']}"
            if body.get("details"):
                text += f" ({body['details']})"
        except (ValueError, KeyError, TypeError):
            text = f"exit status {self.returncode}, stdout {self.stdout[:300]!r}"
        return text + (f"; stderr: {self.stderr.strip()}" if self.stderr.strip() else "")


def config_path(state: State, node: str) -> Path:
    return state.node_dir(node) / "cni-config.json"


def host_root(state: State, node: str) -> Path:
    """The node's simulated host root, where the CNI node pod installs (image mode)."""
    return state.node_dir(node) / "host"


def cni_bin_dir(state: State, node: str) -> Path:
    return host_root(state, node) / "opt" / "cni" / "bin"


def cni_conf_dir(state: State, node: str) -> Path:
    return host_root(state, node) / "etc" / "cni" / "net.d"


def cni_node_socket(state: State, node: str) -> Path:
    return host_root(state, node) / "run" / "ztunnel-py" / "cni" / "plugin.sock"


PRIMARY_CONFIG = "10-testbed.conflist"


def write_primary_config(state: State, node: str) -> None:
    """What the primary plugin would have written on the node (the testbed is that plugin)."""
    directory = cni_conf_dir(state, node)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PRIMARY_CONFIG).write_text(image.primary_config(NETWORK_NAME))


def _chained(state: State, node: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the configuration list, our entry in it), once the CNI node pod has chained us."""
    path = cni_conf_dir(state, node) / PRIMARY_CONFIG
    try:
        text = path.read_text()
    except OSError:
        return None
    entry = install.chained_entry(path.name, text)
    return None if entry is None else (json.loads(text), entry)


def chained(state: State, node: str) -> bool:
    return _chained(state, node) is not None and (cni_bin_dir(state, node) / PLUGIN_TYPE).exists()


def network_config(topology: Topology, socket_path: str, node: NodePlan) -> dict[str, Any]:
    """The plugin's network configuration on `node` (what a runtime reads from /etc/cni)."""
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": PLUGIN_TYPE,
        "enrollSocket": socket_path,
        "namespaceLabels": topology.namespace_labels,
        "pods": {
            f"{p.namespace}/{p.name}": {"serviceAccount": p.service_account}
            for p in topology.pods_on(node.name)
        },
    }


def write_config(topology: Topology, state: State, node: NodePlan, socket_path: str) -> None:
    path = config_path(state, node.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(network_config(topology, socket_path, node), indent=2) + "\n")


def container_id(prefix: str, pod: PodPlan) -> str:
    return hashlib.sha256(f"{prefix}{pod.name}".encode()).hexdigest()


def prev_result(pod: PodPlan, node: NodePlan) -> dict[str, Any]:
    """The primary plugin's result for `pod`: its veth pair, addresses and routes."""
    ips: list[dict[str, Any]] = [
        {"address": f"{pod.ip}/32", "gateway": node.gateway, "interface": 1}
    ]
    routes: list[dict[str, str]] = [{"dst": "0.0.0.0/0", "gw": node.gateway}]
    if pod.ipv6 is not None and node.gateway6 is not None:
        ips.append({"address": f"{pod.ipv6}/128", "gateway": node.gateway6, "interface": 1})
        routes.append({"dst": "::/0", "gw": node.gateway6})
    return {
        "cniVersion": CNI_VERSION,
        "interfaces": [
            {"name": pod.host_iface, "mac": namespaces.mac_address(node.netns, pod.host_iface)},
            {
                "name": "eth0",
                "mac": namespaces.mac_address(pod.netns, "eth0"),
                "sandbox": pod.netns_path,
            },
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }


def environment(command: str, prefix: str, pod: PodPlan) -> dict[str, str]:
    cid = container_id(prefix, pod)
    args = {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": pod.namespace,
        "K8S_POD_NAME": pod.name,
        "K8S_POD_INFRA_CONTAINER_ID": cid,
        "K8S_POD_UID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}{pod.uid}")),
    }
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": pod.netns_path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(sys.executable),
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in args.items()),
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    # The plugin is this Python package: let it be found the way the testbed itself was.
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def request(
    topology: Topology, state: State, command: str, pod: PodPlan
) -> tuple[dict[str, str], bytes]:
    """The environment and stdin a runtime gives the plugin for `command` on `pod`."""
    node = topology.node(pod.node)
    env = environment(command, topology.prefix, pod)
    if state.image is not None:
        found = _chained(state, node.name)
        if found is None:
            raise TestbedError(f"the CNI plugin is not chained on {node.name}")
        conflist, config = found
        config.update(name=conflist["name"], cniVersion=conflist["cniVersion"])
        env["CNI_PATH"] = str(cni_bin_dir(state, node.name))
    else:
        config = json.loads(config_path(state, node.name).read_text())
    config["prevResult"] = prev_result(pod, node)
    return env, json.dumps(config).encode()


def run_plugin(
    node: NodePlan, env: dict[str, str], stdin: bytes, *, installed: bool = False
) -> tuple[int, str, str]:
    """Run the plugin in the node's namespace: (exit status, stdout, stderr). `ztunnel-py cni`
    from this environment, or (`installed`) the executable the CNI node pod installed, found as
    a runtime finds it: CNI_PATH/<type>."""
    plugin = (
        [str(Path(env["CNI_PATH"]) / PLUGIN_TYPE)]
        if installed
        else [sys.executable, "-m", "ztunnel_py.cli", "cni"]
    )
    argv = ["nsenter", f"--net={namespaces.netns_path(node.netns)}", "--", *plugin]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, env=env, timeout=PLUGIN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return -1, "", f"the plugin did not finish within {PLUGIN_TIMEOUT:.0f} s"
    return (
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def invoke(topology: Topology, state: State, command: str, pods: list[PodPlan]) -> list[Outcome]:
    """Run the plugin for every pod at once (as a runtime starts pods in parallel)."""

    def one(pod: PodPlan) -> Outcome:
        try:
            env, stdin = request(topology, state, command, pod)
        except (TestbedError, OSError, ValueError) as e:
            return Outcome(pod, command, -1, "", f"cannot describe pod {pod.name}: {e}")
        installed = state.image is not None
        code, out, err = run_plugin(topology.node(pod.node), env, stdin, installed=installed)
        return Outcome(pod, command, code, out, err)

    if not pods:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(pods))) as pool:
        return list(pool.map(one, pods))
