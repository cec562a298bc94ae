"""Progressive delivery end to end: `ztunnel-py canary run` (the real CLI) releases echo v2
behind a Flagger-style Canary on an ambient testbed with a waypoint, gated by the waypoint's
metrics in the testbed's real Prometheus, while a client in web-1 keeps calling the echo VIP.

A healthy v2 goes through shadow traffic and stepped weights to 100%; a v2 whose app answers
500s, and one that answers slowly, is rolled back to v1 automatically, with the metric values
that drove the decision in the Canary's status; with Prometheus stopped the analysis halts with
a clear error and never promotes. v2 misbehaves for real: its pods' app is restarted as a
broken release (`podserver --fail-percent`, `--delay-ms`), so the failures and the latency are
the ones clients would get.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.netns.test_waypoint import ECHO_VIP, wait_until, waypoint_testbed
from ztunnel_py.canary.analysis import FAILED, SUCCEEDED
from ztunnel_py.testbed import resources
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.resources import ObjectRef
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

V2_PODS = ("echo-2",)
CANARY = """\
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {{name: echo, namespace: apps}}
spec:
  targetRef: {{apiVersion: v1, kind: Service, name: echo}}
  versions: {{primary: v1, canary: v2}}
  service: {{port: 80}}
  analysis:
    interval: 3s
    threshold: 2
    stepWeight: {step}
    maxWeight: {max}
    mirror: {mirror}
    metrics:
    - {{name: request-success-rate, thresholdRange: {{min: 99}}, interval: 6s}}
    - {{name: request-duration, thresholdRange: {{max: 500}}, interval: 6s}}
"""
# A bound for every run: each step is 3 s, and the longest rhythm here has 6 of them.
RUN_TIMEOUT = 90


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    yield from waypoint_testbed("cn", pods_per_node=2)


class Load:
    """A client in web-1 calling the echo VIP every 50 ms (bounded: 2,400 requests, 3 min)."""

    SCRIPT = (
        "import http.client, sys, time\n"
        "for _ in range(2400):\n"
        "    try:\n"
        "        c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)\n"
        "        c.request('GET', '/'); c.getresponse().read(); c.close()\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.05)\n"
    )

    def __init__(self, bed: Testbed) -> None:
        argv = bed.exec_argv("web-1", [sys.executable, "-c", self.SCRIPT, ECHO_VIP])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def load(bed: Testbed) -> Iterator[Load]:
    running = Load(bed)
    try:
        yield running
    finally:
        running.stop()
        for pod in V2_PODS:
            bed.release_pod_app(pod)
        for kind in ("Canary", "VirtualService", "DestinationRule"):
            bed.delete(
                yaml.safe_dump({"kind": kind, "metadata": {"name": "echo", "namespace": "apps"}})
            )


def run_controller(bed: Testbed, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "ztunnel_py.cli", "canary", "run", "--prefix", bed.prefix]
    return subprocess.run(
        [*argv, "--until-done", "--timeout", str(RUN_TIMEOUT), *extra],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 30,
        check=False,
    )


def stored(bed: Testbed, kind: str) -> dict[str, Any]:
    text = (bed.config_dir / ObjectRef(kind, "apps", "echo").file_name).read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def weights(bed: Testbed) -> dict[str, int]:
    route = stored(bed, "VirtualService")["spec"]["http"][0]
    return {d["destination"]["subset"]: d["weight"] for d in route["route"]}


def answers_by_version(bed: Testbed, count: int) -> dict[str, int]:
    script = (
        "import http.client, json, sys, collections\n"
        "seen = collections.Counter()\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)\n"
        "    c.request('GET', '/'); r = c.getresponse()\n"
        "    seen[json.loads(r.read()).get('version')] += 1; c.close()\n"
        "print(json.dumps(seen))\n"
    )
    done = bed.exec("web-1", [sys.executable, "-c", script, ECHO_VIP, str(count)], timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = yaml.safe_load(done.stdout)
    return result


def status_text(bed: Testbed) -> str:
    argv = [sys.executable, "-m", "ztunnel_py.cli", "canary", "status", "--prefix", bed.prefix]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def test_a_healthy_v2_is_promoted_in_steps_after_shadow_traffic(bed: Testbed, load: Load) -> None:
    bed.apply(CANARY.format(step=25, max=50, mirror="true"))
    done = run_controller(bed)
    assert done.returncode == 0, done.stdout + done.stderr
    status = stored(bed, "Canary")["status"]
    assert status["phase"] == SUCCEEDED
    assert (
        status["conditions"][0] | {"type": "Promoted", "status": "True"} == status["conditions"][0]
    )
    # the rhythm: all to v1, shadow traffic, 25%, 50%, then all to v2
    path = [(s["primaryWeight"], s["canaryWeight"], s["mirror"]) for s in status["steps"]]
    moves = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    assert moves == [
        (100, 0, False),
        (100, 0, True),
        (75, 25, False),
        (50, 50, False),
        (0, 100, False),
    ]
    # each move after the shadow traffic started was gated by values Prometheus had
    advancing = [s for s in status["steps"] if s["checks"] and s["phase"] != FAILED]
    passed = [s for s in advancing if all(c["ok"] for c in s["checks"])]
    assert len(passed) == 3, status["steps"]
    for step in passed:
        rate, duration = step["checks"]
        assert rate["value"] >= 99 and 0 < duration["value"] <= 500, step
    assert weights(bed) == {"primary": 0, "canary": 100}
    # clients now only reach v2, through the waypoint that applied the VirtualService
    assert answers_by_version(bed, 20) == {"v2": 20}
    assert "Promotion of apps/echo completed" in done.stdout
    assert "apps/echo  echo v1->v2  Succeeded  0/100" in status_text(bed)


def test_a_v2_answering_500s_is_rolled_back_to_v1(bed: Testbed, load: Load) -> None:
    for pod in V2_PODS:
        bed.release_pod_app(pod, fail_percent=100)
    bed.apply(CANARY.format(step=20, max=60, mirror="false"))
    done = run_controller(bed)
    assert done.returncode == 1, done.stdout + done.stderr
    status = stored(bed, "Canary")["status"]
    assert status["phase"] == FAILED
    assert status["conditions"][0]["status"] == "False"
    # v2 got 20% of real traffic, failed its gates twice, and everything went back to v1
    failing = [s for s in status["steps"] if s["checks"] and not s["checks"][0]["ok"]]
    assert len(failing) == 2
    for step in failing:
        rate = step["checks"][0]
        assert rate["metric"] == "request-success-rate" and rate["value"] < 99, step
        assert rate["error"].endswith(" < 99"), step
        assert step["fromCanaryWeight"] == 20
    assert (
        "Rolling back apps/echo: failed checks threshold reached 2"
        in status["steps"][-1]["decision"]
    )
    assert status["steps"][-1]["canaryWeight"] == 0
    assert weights(bed) == {"primary": 100, "canary": 0}
    # the controller may stop before the waypoint has the rolled-back routes
    wait_until(lambda: answers_by_version(bed, 20) == {"v1": 20}, "the rollback at the waypoint")
    assert answers_by_version(bed, 50) == {"v1": 50}
    assert "request-success-rate" in status_text(bed)


def test_a_slow_v2_is_rolled_back_while_it_only_gets_shadow_traffic(
    bed: Testbed, load: Load
) -> None:
    for pod in V2_PODS:
        bed.release_pod_app(pod, delay_ms=700)
    bed.apply(CANARY.format(step=25, max=50, mirror="true"))
    done = run_controller(bed)
    assert done.returncode == 1, done.stdout + done.stderr
    status = stored(bed, "Canary")["status"]
    assert status["phase"] == FAILED
    failing = [s for s in status["steps"] if s["checks"] and not all(c["ok"] for c in s["checks"])]
    assert len(failing) == 2
    for step in failing:
        assert step["fromMirror"] and step["fromCanaryWeight"] == 0  # clients never saw v2
        rate, duration = step["checks"]
        assert rate["ok"], step  # slow, not failing
        assert not duration["ok"] and duration["value"] > 500, step
        assert duration["error"].endswith(" > 500")
    assert weights(bed) == {"primary": 100, "canary": 0}
    assert "mirror" not in stored(bed, "VirtualService")["spec"]["http"][0]


def test_without_prometheus_the_analysis_halts_and_never_promotes(bed: Testbed, load: Load) -> None:
    bed.stop_prometheus()
    try:
        bed.apply(CANARY.format(step=50, max=50, mirror="false"))
        done = run_controller(bed)
    finally:
        bed.start_prometheus()
    assert done.returncode == 1, done.stdout + done.stderr
    status = stored(bed, "Canary")["status"]
    assert status["phase"] == FAILED
    assert all(s["canaryWeight"] < 100 for s in status["steps"])
    failing = [s for s in status["steps"] if s["checks"]]
    assert len(failing) == 2
    for step in failing:
        for check in step["checks"]:
            assert check["value"] is None
            assert check["error"].startswith(
                "not measured: Prometheus at http://10.250.0.3:9090 is not reachable"
            ), check
    assert "is not reachable" in done.stdout
    assert weights(bed) == {"primary": 100, "canary": 0}


def test_an_invalid_canary_is_refused_by_the_control_plane_and_the_controller(
    bed: Testbed,
) -> None:
    bad = CANARY.format(step=70, max=50, mirror="false")
    with pytest.raises(TestbedError, match="stepWeight 70 is above maxWeight 50"):
        bed.apply(bad)
    # written past the apply's validation, as a cluster without the webhook would store it
    resources.write(bed.config_dir, [yaml.safe_load(bad)])
    try:
        done = run_controller(bed, "--timeout", "5")
        assert "spec.analysis.stepWeight: stepWeight 70 is above maxWeight 50" in done.stdout
        assert not (bed.config_dir / ObjectRef("VirtualService", "apps", "echo").file_name).exists()
        log = (bed.state.log_dir / "controlplane.log").read_text()
        deadline = time.monotonic() + 10
        while "stepWeight 70 is above maxWeight 50" not in log and time.monotonic() < deadline:
            time.sleep(0.2)
            log = (bed.state.log_dir / "controlplane.log").read_text()
        assert "canary_apps_echo.yaml" in log and "stepWeight 70 is above maxWeight 50" in log
    finally:
        bed.delete(bad)
