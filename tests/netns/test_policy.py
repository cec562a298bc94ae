"""L4 authorization on the real data path: new connections denied with the policy named, and
late enforcement closing open connections that a policy change now denies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns

DENY_WEB = {
    "name": "deny-web",
    "namespace": "apps",
    "scope": "Namespace",
    "action": "Deny",
    "dryRun": False,
    "rules": [[[{"principals": [{"Exact": "cluster.local/ns/apps/sa/web"}]}]]],
}


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("p"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def pod(bed: Testbed, name: str) -> dict[str, Any]:
    pods: list[dict[str, Any]] = bed.status()["pods"]
    return next(p for p in pods if p["name"] == name)


def set_policies(bed: Testbed, policies: list[dict[str, Any]]) -> None:
    """Rewrite the agents' local config and make node2's agent reload it."""
    path = bed.state.local_config
    config = yaml.safe_load(path.read_text())
    config["policies"] = policies
    path.write_text(yaml.safe_dump(config))
    os.kill(int(bed.status()["nodes"][1]["agent"]["pid"]), signal.SIGHUP)


def long_lived(bed: Testbed, client: str, server_ip: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        bed.exec_argv(client, ["iperf3", "-c", server_ip, "-p", str(port), "-t", "12",
                               "-b", "1M", "-J"]),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_policy_change_denies_new_and_closes_open_connections_within_1s(bed: Testbed) -> None:
    echo2 = pod(bed, "echo-2")
    extra = subprocess.Popen(
        bed.exec_argv("echo-2", ["iperf3", "-s", "-p", "5202", "-1"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        denied = long_lived(bed, "web-1", echo2["ip"], 5201)
        unrelated = long_lived(bed, "curl-2", echo2["ip"], 5202)
        time.sleep(3)
        assert denied.poll() is None and unrelated.poll() is None
        changed = time.monotonic()
        set_policies(bed, [DENY_WEB])
        denied.wait(timeout=10)
        assert time.monotonic() - changed < 2.5  # iperf3 notices within its 1 s report tick
        assert unrelated.poll() is None
        # New connections from web are refused (HBONE 401); others still work.
        done = bed.exec("web-1", ["curl", "-sS", "--max-time", "5", f"http://{echo2['ip']}:8080/"])
        assert done.returncode != 0
        assert http_get(bed, "curl-2", echo2["ip"], 8080).pod == "echo-2"
        out, _ = unrelated.communicate(timeout=30)
        assert unrelated.returncode == 0
        assert "error" not in json.loads(out)
    finally:
        set_policies(bed, [])
        extra.kill()
        extra.wait()
    log = Path(bed.status()["nodes"][1]["log"]).read_text()
    assert "connection closed due to policy change" in log
    assert "explicitly denied by: apps/deny-web" in log
    assert http_get(bed, "web-1", echo2["ip"], 8080).pod == "echo-2"
