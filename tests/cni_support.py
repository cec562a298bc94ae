"""The CNI host shim as a node would have it: compiled from its C source, statically, as the
Dockerfile compiles it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ztunnel_py.cni

SHIM_SOURCE = Path(ztunnel_py.cni.__file__).parent / "shim" / "ztunnel-py-cni.c"


def build_shim(directory: Path) -> Path:
    """Compile the shim into `directory`; the executable's path."""
    out = directory / "ztunnel-py-cni"
    done = subprocess.run(
        ["gcc", "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SHIM_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return out
