"""`ztunnel-py bench policy` at a small scale, as a user runs it, so the benchmark keeps working
(figures unchecked beyond being measured)."""

from __future__ import annotations

import json
import subprocess
import sys

SHAPES = {
    "mtls allowed",
    "mtls denied by DENY",
    "plaintext, no identity",
    "mtls, no policy matches",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "bench", "policy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bench_policy_json() -> None:
    done = _run("--policies", "200", "--budget", "0.2", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["policies"], result["in_scope"]) == (200, 200)
    assert result["allow"] + result["deny"] + result["dry_run"] == 200
    assert min(result["allow"], result["deny"], result["dry_run"]) > 0
    for key in ("first_load_seconds", "translate_seconds", "one_change_median_seconds"):
        assert result[key] > 0
    assert len(result["one_change_seconds"]) == 5
    assert set(result["decisions"]) == SHAPES
    timings = [result["compile"], result["policies_for"], *result["decisions"].values()]
    for timing in timings:
        assert timing["iterations"] >= 5
        assert 0 < timing["median_us"] <= timing["p99_us"]
    assert "decision 'mtls allowed'" in done.stderr  # progress goes to stderr with --json


def test_too_few_policies_is_a_clear_error() -> None:
    done = _run("--policies", "3")
    assert done.returncode == 1
    assert "bench policy: --policies must be at least 10" in done.stderr
    assert "Traceback" not in done.stderr
