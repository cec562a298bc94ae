"""The control plane's acceptance on a real mesh: the testbed's watched directory in, workload xDS
out to every agent.

One 2-node testbed for the module. Changes to Service and Pod files reach every agent's
/config_dump within 1 s without restarts, and a long-lived connection stays up across the
pushes; broken files are reported with file and field while the last good configuration keeps
being served; with the control plane stopped for `OUTAGE_SECONDS` the data plane keeps working,
and once it is back the agents reconnect and resync without dropping connections.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.traffic import http_get

pytestmark = pytest.mark.netns

# The figure: the control plane is gone for a full minute, longer than any debounce,
# backoff or keepalive in the agents (the xDS reconnect backoff is capped at 15 s; the xDS
# channel's keepalive gives up after 30 + 10 s, an HBONE connection's after 10 + 20 s), so
# surviving it shows they really run on cached state.
OUTAGE_SECONDS = 60
PUSH_DEADLINE = 1.0

EXTRA_VIP = "10.96.1.10"
EXTRA_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata:
  name: echo-extra
  namespace: apps
spec:
  selector:
    app: echo
  ports:
  - name: http
    port: 80
    targetPort: 8080
  clusterIP: {EXTRA_VIP}
"""
EXTRA_HOSTNAME = "echo-extra.apps.svc.cluster.local"

GHOST_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: ghost
  namespace: apps
  labels:
    app: echo
spec:
  serviceAccountName: echo
  nodeName: node1
  containers:
  - name: echo
    image: none
    ports:
    - containerPort: 8080
status:
  phase: Running
  podIP: 10.244.1.99
  podIPs:
  - ip: 10.244.1.99
"""
GHOST_UID = "Kubernetes//Pod/apps/ghost"

Dump = dict[str, Any]


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("cp"), nodes=2, pods_per_node=2)
    try:
        yield tb
    finally:
        tb.down()


def config_dump(bed: Testbed, node: str) -> Dump:
    done = bed.exec(node, ["curl", "-sS", "--max-time", "2", "localhost:15000/config_dump"])
    assert done.returncode == 0, done.stderr
    dump: Dump = json.loads(done.stdout)
    return dump


def debug_config(bed: Testbed) -> Dump:
    done = subprocess.run(
        ["ip", "netns", "exec", bed.topology.cp_netns, "curl", "-sS", "--max-time", "2",
         bed.controlplane_debug_url],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config: Dump = json.loads(done.stdout)
    return config


def nodes(bed: Testbed) -> list[str]:
    return [n.name for n in bed.topology.nodes]


def wait_all_agents(
    bed: Testbed, check: Callable[[Dump], bool], since: float, deadline: float
) -> float:
    """Poll every agent's /config_dump until `check` holds for all; seconds since `since`."""
    pending = set(nodes(bed))
    while pending:
        for node in sorted(pending):
            if check(config_dump(bed, node)):
                pending.discard(node)
        elapsed = time.monotonic() - since
        if pending and elapsed > deadline:
            raise AssertionError(f"agents {sorted(pending)} not updated after {elapsed:.2f} s")
    return time.monotonic() - since


def service(dump: Dump, hostname: str) -> Dump | None:
    return next((s for s in dump["services"] if s["hostname"] == hostname), None)


def workload(dump: Dump, uid: str) -> Dump | None:
    return next((w for w in dump["workloads"] if w["uid"] == uid), None)


def agent_pids(bed: Testbed) -> list[int]:
    return [n.agent.pid for n in bed.status().nodes if n.agent.pid is not None]


def long_lived(bed: Testbed, seconds: int) -> subprocess.Popen[str]:
    """iperf3 from curl-2 (node2) to echo-1 (node1): a meshed cross-node connection."""
    echo1 = bed.topology.pod("echo-1").ip
    return subprocess.Popen(
        bed.exec_argv("curl-2", ["iperf3", "-c", echo1, "-t", str(seconds), "-b", "1M", "-J"]),
        stdout=subprocess.PIPE,
        text=True,
    )


def assert_survived(proc: subprocess.Popen[str], timeout: float) -> None:
    out, _ = proc.communicate(timeout=timeout)
    result = json.loads(out)
    assert "error" not in result, result["error"]
    assert proc.returncode == 0
    assert result["end"]["sum_received"]["bytes"] > 0


def test_service_and_pod_changes_reach_every_agent_within_1s(bed: Testbed) -> None:
    pids = agent_pids(bed)
    connection = long_lived(bed, 15)
    try:
        time.sleep(1)
        assert connection.poll() is None

        # timed from the write: `apply` first runs the control plane's validation
        bed.apply(EXTRA_SERVICE)
        added = time.monotonic()
        took = wait_all_agents(
            bed, lambda d: service(d, EXTRA_HOSTNAME) is not None, added, PUSH_DEADLINE
        )
        assert took < PUSH_DEADLINE
        # The new VIP works at once through the mesh, to the echo pods it selects.
        assert http_get(bed, "web-1", EXTRA_VIP, 80).pod in ("echo-1", "echo-2")

        bed.apply(EXTRA_SERVICE.replace("port: 80\n", "port: 8081\n"))
        changed = time.monotonic()

        def has_new_port(d: Dump) -> bool:
            svc = service(d, EXTRA_HOSTNAME)
            return svc is not None and "8081" in json.dumps(svc["ports"])

        assert wait_all_agents(bed, has_new_port, changed, PUSH_DEADLINE) < PUSH_DEADLINE
        assert http_get(bed, "web-1", EXTRA_VIP, 8081).pod in ("echo-1", "echo-2")

        bed.apply(GHOST_POD)
        added = time.monotonic()

        def has_ghost(d: Dump) -> bool:
            ghost = workload(d, GHOST_UID)
            svc = service(d, EXTRA_HOSTNAME)
            return ghost is not None and svc is not None and GHOST_UID in svc["endpoints"]

        assert wait_all_agents(bed, has_ghost, added, PUSH_DEADLINE) < PUSH_DEADLINE

        deleted = time.monotonic()
        bed.delete(GHOST_POD)
        bed.delete(EXTRA_SERVICE)

        def gone(d: Dump) -> bool:
            return workload(d, GHOST_UID) is None and service(d, EXTRA_HOSTNAME) is None

        assert wait_all_agents(bed, gone, deleted, PUSH_DEADLINE) < PUSH_DEADLINE
        assert connection.poll() is None
    finally:
        bed.delete(GHOST_POD + "---\n" + EXTRA_SERVICE)
        assert_survived(connection, timeout=30)
    assert agent_pids(bed) == pids  # no agent was restarted


BROKEN_SYNTAX = "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n"
WRONG_TYPE = EXTRA_SERVICE.replace("port: 80\n", "port: eighty\n")
UNKNOWN_KIND = "apiVersion: example.com/v1\nkind: Frobnicator\nmetadata:\n  name: frob\n"


def run_testbed_cli(bed: Testbed, *args: str, input: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "testbed", *args,
         "--prefix", bed.prefix, "--state-dir", str(bed.state_dir)],
        input=input, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_apply_refuses_yaml_it_cannot_read_or_name_and_writes_nothing(bed: Testbed) -> None:
    files = sorted(p.name for p in bed.config_dir.iterdir())
    done = run_testbed_cli(bed, "apply", "-f", "-", input=BROKEN_SYNTAX)
    assert done.returncode == 1
    assert "<stdin>: not valid YAML: line 4 column 1" in done.stderr
    done = run_testbed_cli(
        bed, "apply", "-f", "-", input="kind: Pod\nmetadata: {namespace: apps}\n"
    )
    assert done.returncode == 1
    assert "document 0: metadata.name: missing" in done.stderr
    assert sorted(p.name for p in bed.config_dir.iterdir()) == files


def test_apply_checks_with_the_control_planes_validation_and_writes_nothing_invalid(
    bed: Testbed,
) -> None:
    files = sorted(p.name for p in bed.config_dir.iterdir())
    done = run_testbed_cli(bed, "apply", "-f", "-", input=WRONG_TYPE + "---\n" + UNKNOWN_KIND)
    assert done.returncode == 1
    assert "rejected by the control plane's validation, nothing written" in done.stderr
    assert "Service apps/echo-extra: spec.ports[0].port: expected an integer" in done.stderr
    # kubectl's dry runs: checked, never written
    for mode in ("client", "server"):
        done = run_testbed_cli(bed, "apply", "-f", "-", f"--dry-run={mode}", input=EXTRA_SERVICE)
        assert done.returncode == 0, done.stderr
        assert f"Service apps/echo-extra valid (dry run: {mode}, not written)" in done.stdout
    assert sorted(p.name for p in bed.config_dir.iterdir()) == files


def test_invalid_files_are_reported_by_file_and_field_and_change_nothing(bed: Testbed) -> None:
    before = debug_config(bed)
    dumps = {node: config_dump(bed, node) for node in nodes(bed)}
    # Written straight into the directory, as a sync tool would: the control plane reports
    # them and keeps serving what it had.
    written = {
        "broken-syntax.yaml": BROKEN_SYNTAX,
        "service_apps_echo-extra.yaml": WRONG_TYPE,
        "frobnicator_frob.yaml": UNKNOWN_KIND,
    }
    for name, text in written.items():
        (bed.config_dir / name).write_text(text)
    try:
        expected = {
            "broken-syntax.yaml": "invalid YAML",
            "service_apps_echo-extra.yaml": "spec.ports[0].port: expected an integer",
        }
        deadline = time.monotonic() + 5
        while True:
            state = debug_config(bed)
            errors = state["errors"]
            missing = {
                name: field
                for name, field in expected.items()
                if not any(name in e and field in e for e in errors)
            }
            skipped = any("frobnicator_frob.yaml" in n and "skipped" in n for n in state["notes"])
            if not missing and skipped:
                break
            assert time.monotonic() < deadline, f"no error for {missing} in {errors}"
            time.sleep(0.1)
        after = debug_config(bed)
        for key in ("workloads", "services", "policies"):
            assert after[key] == before[key]
        # Nothing was pushed: the agents serve exactly what they had, and the mesh works.
        time.sleep(0.5)
        for node, dump in dumps.items():
            now = config_dump(bed, node)
            for key in ("workloads", "services", "policies"):
                assert now[key] == dump[key], (node, key)
        assert service(now, EXTRA_HOSTNAME) is None
        assert http_get(bed, "curl-2", bed.topology.service("echo").vip, 80).pod.startswith("echo")
    finally:
        for name in written:
            (bed.config_dir / name).unlink()
    deadline = time.monotonic() + 5
    while debug_config(bed)["errors"]:
        assert time.monotonic() < deadline, debug_config(bed)["errors"]
        time.sleep(0.1)


def test_data_plane_survives_a_controlplane_outage_and_resyncs(bed: Testbed) -> None:
    pids = agent_pids(bed)
    echo_vip = bed.topology.service("echo").vip
    echo2 = bed.topology.pod("echo-2").ip
    connection = long_lived(bed, OUTAGE_SECONDS + 15)
    try:
        time.sleep(1)
        assert bed.stop_controlplane() is not None
        stopped = time.monotonic()
        bed.apply(EXTRA_SERVICE)  # made while the control plane is down
        # New connections, by pod IP and by VIP, keep working throughout the outage.
        while time.monotonic() - stopped < OUTAGE_SECONDS:
            assert http_get(bed, "web-1", echo2, 8080).pod == "echo-2"
            assert http_get(bed, "curl-2", echo_vip, 80).pod.startswith("echo")
            assert connection.poll() is None
            time.sleep(min(10.0, max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped))))
        for node in nodes(bed):
            assert service(config_dump(bed, node), EXTRA_HOSTNAME) is None
        assert http_get(bed, "web-1", echo2, 8080).pod == "echo-2"

        restarted = time.monotonic()
        bed.start_controlplane()
        # Reconnected and resynced: the change made during the outage reaches every agent.
        wait_all_agents(
            bed, lambda d: service(d, EXTRA_HOSTNAME) is not None, restarted, deadline=30
        )
        assert http_get(bed, "web-1", EXTRA_VIP, 80).pod in ("echo-1", "echo-2")
        assert connection.poll() is None
        assert debug_config(bed)["services"] == 2  # echo and echo-extra
    finally:
        bed.delete(EXTRA_SERVICE)
        if not bed.status().controlplane.alive:
            bed.start_controlplane()
        assert_survived(connection, timeout=OUTAGE_SECONDS + 60)
    assert agent_pids(bed) == pids
