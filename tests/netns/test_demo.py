"""The README's main job: `ztunnel-py demo` on the netns testbed, as a new user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.netns.conftest import unique_prefix
from ztunnel_py.testbed import namespaces

pytestmark = pytest.mark.netns


def test_demo_passes_every_check_and_leaves_nothing_behind() -> None:
    prefix = unique_prefix("demo")
    done = subprocess.run(
        [sys.executable, "-m", "ztunnel_py.cli", "demo", "--prefix", prefix, "--seconds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "11/11 checks passed" in done.stdout
    assert "[FAIL" not in done.stdout
    assert f"testbed {prefix} is down" in done.stdout
    assert not any(namespaces.exists(f"{prefix}{n}") for n in ("fabric", "cp", "node1", "node2"))
