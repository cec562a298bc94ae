"""A regular `pip install` (not editable) of this repository compiles and loads the capture
programs, run from a directory outside the checkout: the C sources ship as package data.

The fresh virtual environment is made as `scripts/install.sh` makes one (Debian's python3, with
bcc linked in from Debian's python3-bpfcc) and gets the package and its dependencies through pip's
ordinary configuration; pip's cache makes a second run quick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ztunnel_py.redirect import bpfsys
from ztunnel_py.redirect.compile import MAPS, PROGRAMS, build_key, packaged_sources, read_bundle
from ztunnel_py.redirect.programs import load_and_pin

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_BCC = Path("/usr/lib/python3/dist-packages/bcc")
INSTALL_TIMEOUT = 150


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH (the test run points it at the checkout), only the install is seen.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@dataclass(frozen=True)
class Install:
    python: Path
    site_packages: Path


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Install]:
    """A fresh venv with ztunnel_py installed by pip from a copy of the repository's sources
    (pyproject.toml, README.md, ztunnel_py/), which is deleted once installed."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(
        REPO / "ztunnel_py",
        source / "ztunnel_py",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    venv = tmp_path / "venv"
    run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], tmp_path, 60)
    python = venv / "bin" / "python"
    purelib = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            tmp_path,
            30,
        ).stdout.strip()
    )
    (purelib / "bcc").symlink_to(SYSTEM_BCC)
    # --no-compile: writing bytecode for every dependency (the Kubernetes client alone has
    # thousands of modules) is most of the install's time and nothing this test looks at
    run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
         str(source)],
        tmp_path,
        INSTALL_TIMEOUT,
    )  # fmt: skip
    shutil.rmtree(source)  # the install must stand on its own
    yield Install(python, purelib)


@pytest.mark.skipif(
    not SYSTEM_PYTHON.exists() or not SYSTEM_BCC.is_dir(),
    reason="needs Debian's python3 and python3-bpfcc (scripts/install.sh installs them)",
)
def test_a_pip_installed_package_compiles_and_loads_the_capture_programs(
    installed: Install, pin_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [str(installed.python), "-c", "import ztunnel_py.redirect as r; print(r.__file__)"],
        elsewhere,
        30,
    ).stdout.strip()
    # A regular install: the package's files are in the venv, not links back to a checkout.
    assert Path(where) == installed.site_packages / "ztunnel_py" / "redirect" / "__init__.py"
    assert (installed.site_packages / "ztunnel_py" / "redirect" / "bpf" / "redirect.h").is_file()

    bundle_path = tmp_path / "redirect.bundle.json"
    done = run(
        [str(installed.python.parent / "ztunnel-py"), "bpf", "bundle", "-o", str(bundle_path)],
        elsewhere,
        120,
    )
    assert done.stdout.startswith(f"wrote {bundle_path}: build key ")
    # The installed copy of the sources makes the same bundle as this checkout's.
    bundle = read_bundle(bundle_path)
    assert bundle.build_key == build_key(packaged_sources())
    report = load_and_pin(pin_dir, bundle)
    # The pinned programs are loaded in the kernel, with the tags the load reported.
    for name, spec in PROGRAMS.items():
        fd = bpfsys.open_program(pin_dir / name, spec.prog_type)
        try:
            assert bpfsys.program_tag(fd) == report.tags[name]
        finally:
            os.close(fd)
    assert {p.name for p in pin_dir.iterdir()} == {*PROGRAMS, *MAPS}
