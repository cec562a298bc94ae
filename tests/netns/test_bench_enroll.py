"""`ztunnel-py bench enroll --quick`, as a user runs it: every lean pod is enrolled through the
CNI plugin and its first connection to the echo VIP is served through the agent (the capture
counters show it handed over), the times are positive and bounded, the memory figures come out,
and nothing of the run is left behind: no namespace, no BPF pin, no state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.bench.enroll import SERVE_TIMEOUT
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.testbed import default_state_dir

pytestmark = pytest.mark.netns


def _run(prefix: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "bench", "enroll", *argv, "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _namespaces() -> list[str]:
    return [n.split()[0] for n in namespaces.ip("netns", "list").splitlines() if n.strip()]


def _left_behind(prefix: str) -> list[str]:
    left = [n for n in _namespaces() if n.startswith(prefix)]
    pins = Path(f"/sys/fs/bpf/ztunnel-py/testbed/{prefix}node1")
    return left + [str(p) for p in (pins, default_state_dir(prefix)) if p.exists()]


def test_quick_enroll_serves_every_pods_first_connection_through_the_agent() -> None:
    prefix = unique_prefix("be")
    done = _run(prefix, "--pods", "4,8", "--quick", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 pods enrolled and served" in done.stderr
    result = json.loads(done.stdout)

    rounds = result["rounds"]
    assert [r["pods"] for r in rounds] == [4, 8]
    for r in rounds:
        # every pod's connection went through the capture into the agent, which answered it
        assert r["captured"] == r["pods"] == len(r["timings"])
        assert len({t["pod"] for t in r["timings"]}) == r["pods"]
        for t in r["timings"]:
            assert 0 < t["add_ms"] <= t["connected_ms"] <= t["served_ms"]
            assert t["served_ms"] < SERVE_TIMEOUT * 1000 and t["attempts"] >= 1
        assert r["rss_before"] > 0 and r["rss_after"] > 0 and r["pss_after"] > 0

    summaries = result["summaries"]
    assert [s["pods"] for s in summaries] == [4, 8]
    for s in summaries:
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["max_ms"]
        assert s["captured"] == s["enrolled"] == s["pods"]
        assert isinstance(s["rss_kb_per_pod"], float) and isinstance(s["pss_kb_per_pod"], float)
    targets = [t["target"] for t in result["targets"]]
    assert len(targets) == 4 and any("KB per enrolled pod" in t for t in targets)
    assert _left_behind(prefix) == []


def test_interrupted_round_leaves_nothing_behind() -> None:
    """Ctrl-C while a round's pods are enrolling: the pods, the testbed and the pins all go."""
    prefix = unique_prefix("be")
    argv = [sys.executable, "-m", "ztunnel_py.cli", "bench", "enroll", "--pods", "64"]
    proc = subprocess.Popen(
        [*argv, "--prefix", prefix], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "lean pods wired" in line:
                break
        assert any(n.startswith(f"{prefix}pod-enroll-") for n in _namespaces())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert _left_behind(prefix) == []
