"""Where bcc finds kernel headers, checked before it is asked: a node without them (and a
kernel without IKHEADERS) that has to compile the capture programs gets an error that says what
to install, or which bundle to give the agent instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztunnel_py.redirect import compile as bpfcompile


def test_the_agent_says_which_headers_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bpfcompile, "MODULES_DIR", tmp_path / "lib" / "modules")
    monkeypatch.setattr(bpfcompile, "KHEADERS", tmp_path / "kheaders.tar.xz")
    problem = bpfcompile.missing_headers("6.1.0-test")
    assert problem is not None
    assert f"neither {tmp_path}/lib/modules/6.1.0-test/build/include nor" in problem
    assert "linux-headers-$(uname -r)" in problem and "--bpf-bundle PATH" in problem
    # The node's headers, as Debian's package installs them (build links into /usr/src).
    headers = tmp_path / "usr" / "src" / "linux-headers-6.1.0-test"
    (headers / "include").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / "6.1.0-test").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / "6.1.0-test" / "build").symlink_to(headers)
    assert bpfcompile.missing_headers("6.1.0-test") is None
    # Or the kernel's own archive.
    assert bpfcompile.missing_headers("6.2.0-other") is not None
    (tmp_path / "kheaders.tar.xz").write_bytes(b"")
    assert bpfcompile.missing_headers("6.2.0-other") is None
