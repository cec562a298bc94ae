"""The CNI host shim on a node, as a container runtime runs it, enrolling a pod with the agent.

A 1-node testbed with the mesh; `ztunnel-py cni-node` runs in the node's namespace with a
simulated host root (opt/cni/bin, etc/cni/net.d with the primary plugin's list), installs the
statically linked shim there and chains it; the test then does what libcni does: executes
`CNI_PATH/<type>` with our entry of the list (plus its name, version and the primary plugin's
result) on stdin, in the node's network namespace, and the agent enrolls the pod. Uninstalled on
SIGTERM. (The same path from the image: tests/netns/test_image.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cni_support import build_shim
from tests.netns.conftest import unique_prefix
from ztunnel_py.cni.install import PLUGIN_TYPE
from ztunnel_py.testbed import mesh, namespaces, runtime
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("shim"), nodes=1, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def enrolled(bed: Testbed) -> set[str]:
    done = bed.exec("node1", ["curl", "-sS", "--max-time", "5", "127.0.0.1:15000/config_dump"])
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout)["workloadState"])


def test_the_installed_shim_enrolls_a_pod_through_the_cni_node(
    bed: Testbed, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    bin_dir, conf_dir = host / "opt" / "cni" / "bin", host / "etc" / "cni" / "net.d"
    conf_dir.mkdir(parents=True)
    (conf_dir / "10-testbed.conflist").write_text(
        json.dumps(
            {"cniVersion": "1.0.0", "name": "testbed", "plugins": [{"type": "ptp"}]}, indent=2
        )
    )
    socket_path = host / "run" / "ztunnel-py" / "cni" / "plugin.sock"
    node = bed.topology.node("node1")
    static = runtime.network_config(bed.topology, mesh.enroll_socket(bed.state, "node1"), node)
    argv = [
        "nsenter",
        f"--net={namespaces.netns_path(node.netns)}",
        "--",
        sys.executable,
        "-m",
        "ztunnel_py.cli",
        "cni-node",
        "--cni-bin-dir",
        str(bin_dir),
        "--cni-conf-dir",
        str(conf_dir),
        "--socket",
        str(socket_path),
        "--shim",
        str(build_shim(tmp_path)),
        "--enroll-socket",
        mesh.enroll_socket(bed.state, "node1"),
        "--plugin-config",
        json.dumps({k: static[k] for k in ("namespaceLabels", "pods")}),
    ]
    with open(tmp_path / "cni-node.log", "wb") as log:
        cni_node = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while PLUGIN_TYPE not in (conf_dir / "10-testbed.conflist").read_text():
            assert cni_node.poll() is None, (tmp_path / "cni-node.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        conflist = json.loads((conf_dir / "10-testbed.conflist").read_text())
        assert [p["type"] for p in conflist["plugins"]] == ["ptp", PLUGIN_TYPE]

        web = bed.topology.pod("web-1")
        # Out of the mesh first, through the plugin as the testbed runs it...
        assert (
            runtime.run_plugin(node, *runtime.request(bed.topology, bed.state, "DEL", web))[0] == 0
        )
        assert web.uid not in enrolled(bed)

        # ...then back in through the installed shim, as libcni runs a chained plugin.
        env = runtime.environment("ADD", bed.prefix, web)
        env["CNI_PATH"] = str(bin_dir)
        entry: dict[str, Any] = {**conflist["plugins"][1]}
        entry.update(
            name=conflist["name"],
            cniVersion=conflist["cniVersion"],
            prevResult=runtime.prev_result(web, node),
        )
        code, out, err = runtime.run_plugin(node, env, json.dumps(entry).encode(), installed=True)
        assert code == 0, out + err
        assert json.loads(out) == entry["prevResult"]
        assert web.uid in enrolled(bed)
        # Captured again: plain HTTP from web-1 reaches echo-1 through the agent.
        done = bed.exec(web.name, ["curl", "-sS", "--max-time", "10", "http://10.96.0.10/"])
        assert done.returncode == 0 and json.loads(done.stdout)["pod"] == "echo-1", done.stderr
    finally:
        cni_node.send_signal(signal.SIGTERM)
        assert cni_node.wait(15) == 0
    assert not (bin_dir / PLUGIN_TYPE).exists()
    assert [
        p["type"] for p in json.loads((conf_dir / "10-testbed.conflist").read_text())["plugins"]
    ] == ["ptp"]
