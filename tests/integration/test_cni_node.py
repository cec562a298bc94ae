"""`ztunnel-py cni-node` with the real host shim on a simulated host root: the install into the
CNI directories, requests forwarded by the shim as a runtime executes it, the shim's own
answers while the node pod is down, and the uninstall on SIGTERM. (Enrolling a pod through the
shim needs a node agent and network namespaces: tests/netns/test_cni_shim.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cni_support import build_shim
from ztunnel_py.cni.install import PLUGIN_TYPE

PRIMARY = {
    "cniVersion": "1.0.0",
    "name": "k8s-pod-network",
    "plugins": [{"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.9.0.0/24"}}],
}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/32"}]}


@dataclass
class Host:
    root: Path
    shim: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "opt" / "cni" / "bin"

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc" / "cni" / "net.d"

    @property
    def socket(self) -> Path:
        return self.root / "var" / "run" / "ztunnel-py" / "cni" / "plugin.sock"

    def conflist(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads((self.conf_dir / "10-ptp.conflist").read_text())
        return value

    def invoke(self, command: str, namespace: str, **env: str) -> tuple[int, str, str]:
        """Run the chained plugin as libcni does: CNI_PATH/<type>, with the list's name and
        version and the previous plugin's result merged into our entry."""
        conflist = self.conflist()
        entry = next(p for p in conflist["plugins"] if p["type"] == PLUGIN_TYPE)
        stdin = {**entry, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if command in ("ADD", "CHECK"):
            stdin["prevResult"] = PREV
        full_env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c0ffee",
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=p-1",
            **env,
        }
        done = subprocess.run(
            [str(self.bin_dir / entry["type"])],
            input=json.dumps(stdin).encode(),
            env=full_env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def host(tmp_path: Path, shim: Path) -> Host:
    h = Host(tmp_path / "host", shim)
    h.conf_dir.mkdir(parents=True)
    (h.conf_dir / "10-ptp.conflist").write_text(json.dumps(PRIMARY))
    return h


def start_node(host: Host, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "ztunnel_py.cli",
        "cni-node",
        "--cni-bin-dir",
        str(host.bin_dir),
        "--cni-conf-dir",
        str(host.conf_dir),
        "--socket",
        str(host.socket),
        "--shim",
        str(host.shim),
        "--enroll-socket",
        str(host.root / "no-agent.sock"),
        "--plugin-config",
        json.dumps({"namespaceLabels": {"apps": {"istio.io/dataplane-mode": "ambient"}}}),
        "--recheck",
        "0.2",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def node(host: Host, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_node(host, tmp_path / "node.log")
    try:
        wait_until(
            lambda: (host.conf_dir / "10-ptp.conflist").read_text().count(PLUGIN_TYPE) > 0,
            "the plugin to be chained",
        )
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def test_install_forwarding_and_uninstall(host: Host, node: subprocess.Popen[bytes]) -> None:
    installed = host.bin_dir / PLUGIN_TYPE
    assert installed.read_bytes() == host.shim.read_bytes()
    assert os.stat(installed).st_mode & 0o777 == 0o755
    plugins = host.conflist()["plugins"]
    assert plugins[0] == PRIMARY["plugins"][0]
    assert plugins[1]["cniNodeSocket"] == str(host.socket)
    assert plugins[1]["excludeNamespaces"] == ["kube-system", "istio-system"]

    # Answered by the node pod (the plugin's own logic): a pod outside ambient passes through,
    code, out, err = host.invoke("ADD", "legacy")
    assert (code, json.loads(out)) == (0, PREV), err
    # an ambient pod with no agent on the node fails (never start it outside the mesh),
    code, out, _ = host.invoke("ADD", "apps")
    assert code == 1
    assert json.loads(out)["msg"].startswith("the ztunnel-py agent is not reachable on ")
    # and bad input from the runtime gets the plugin's error object.
    code, out, _ = host.invoke("ADD", "apps", CNI_NETNS="/proc/self/ns/nope")
    assert code == 1 and json.loads(out)["code"] == 3

    # The primary plugin rewrites its configuration: the entry comes back.
    (host.conf_dir / "10-ptp.conflist").write_text(json.dumps(PRIMARY))
    wait_until(lambda: len(host.conflist()["plugins"]) == 2, "the entry to be restored")

    node.send_signal(signal.SIGTERM)
    assert node.wait(10) == 0
    assert host.conflist() == PRIMARY
    assert not installed.exists()
    assert not host.socket.exists()


def test_the_shim_answers_alone_while_the_node_pod_is_down(
    host: Host, node: subprocess.Popen[bytes]
) -> None:
    node.send_signal(signal.SIGKILL)  # a crash: the entry and the shim stay behind
    node.wait(10)
    host.socket.unlink()
    assert len(host.conflist()["plugins"]) == 2
    code, out, _ = host.invoke("VERSION", "apps")
    assert code == 0 and "1.1.0" in json.loads(out)["supportedVersions"]
    # Excluded namespaces keep starting: the previous result passes through.
    code, out, _ = host.invoke("ADD", "kube-system")
    assert (code, json.loads(out)) == (0, PREV)
    code, out, _ = host.invoke("ADD", "apps")
    error = json.loads(out)
    assert code == 1 and error["code"] == 11 and error["cniVersion"] == "1.0.0"
    assert str(host.socket) in error["details"]
    code, out, err = host.invoke("DEL", "apps")
    assert (code, out) == (0, "") and "nothing to undo here" in err
    code, out, _ = host.invoke("STATUS", "apps")
    assert code == 1 and json.loads(out)["code"] == 50

    # The next node pod takes over where the crashed one left off.
    restarted = start_node(host, host.root / "node2.log")
    try:
        wait_until(host.socket.exists, "the new node pod's socket")
        code, out, _ = host.invoke("ADD", "legacy")
        assert (code, json.loads(out)) == (0, PREV)
        assert [p["type"] for p in host.conflist()["plugins"]] == ["ptp", PLUGIN_TYPE]
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(10) == 0
    assert host.conflist() == PRIMARY
