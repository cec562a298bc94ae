"""A bounded coverage-guided run of every fuzz target (atheris, a few seconds each), each in a
process of its own so that a crash, a hang or a runaway allocation fails the test and shows the
input. Longer runs: `scripts/fuzz.sh`."""

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


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every target's run, from one process that instruments the imports once and forks a
    fuzzing process per target (see run.py): output and exit status per target in `work`."""
    work = tmp_path_factory.mktemp("fuzz")
    argv = [
        sys.executable, "-m", "tests.fuzz.run", "--each", str(work), str(SECONDS + 60),
        *sorted(TARGETS), "--",
        f"-max_total_time={SECONDS}", "-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1",
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=len(TARGETS) * (SECONDS + 60) + 120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return work


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_fuzzing_run_finds_no_crash(name: str, work: Path) -> None:
    log = (work / f"{name}.log").read_text(errors="replace")
    status = (work / f"{name}.status").read_text()
    crashes = [p.name for p in (work / name).iterdir() if p.is_file()]
    assert status == "0" and not crashes, (status, log[-4000:])
    executed = re.search(r"stat::number_of_executed_units: (\d+)", log)
    assert executed is not None and int(executed.group(1)) > 0, log[-2000:]
