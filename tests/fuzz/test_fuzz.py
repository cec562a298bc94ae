"""A bounded coverage-guided run of every fuzz target (atheris, a few seconds each), each in a
subprocess so that a crash, a hang or a runaway allocation fails the test and shows the input.
Longer runs: `scripts/fuzz.sh`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

pytest.importorskip("atheris")

SECONDS = 3
REPO = Path(__file__).parents[2]
CORPUS = Path(__file__).parent / "corpus"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_fuzzing_run_finds_no_crash(name: str, tmp_path: Path) -> None:
    found = tmp_path / "found"
    found.mkdir()
    argv = [
        sys.executable, "-m", "tests.fuzz.run", name,
        f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=1024",
        "-print_final_stats=1", f"-artifact_prefix={tmp_path}/", str(found), str(CORPUS / name),
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 60, check=False
    )
    crashes = [p.name for p in tmp_path.iterdir() if p.is_file()]
    assert done.returncode == 0 and not crashes, done.stderr[-4000:]
    executed = re.search(r"stat::number_of_executed_units: (\d+)", done.stderr)
    assert executed is not None and int(executed.group(1)) > 0, done.stderr[-2000:]
