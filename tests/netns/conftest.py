"""Fixtures for kernel tests: a shared no-mesh testbed with a unique prefix, always torn down;
pin directories on a bpffs of their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.redirect.bpffs import ensure_bpffs, unmount
from ztunnel_py.testbed.testbed import Testbed


def unique_prefix(tag: str = "tb") -> str:
    """A fresh namespace prefix (`zt<tag><hex>-`) so parallel runs never collide."""
    return f"zt{tag}{secrets.token_hex(3)}-"


@pytest.fixture(scope="module")
def nomesh_testbed() -> Iterator[Testbed]:
    """2 nodes x 2 pods (and legacy-1), dual stack, pod servers running, no control plane or
    agents."""
    bed = Testbed.up(prefix=unique_prefix(), nodes=2, pods_per_node=2, mode="none", dual_stack=True)
    try:
        yield bed
    finally:
        bed.down()


def client_ip(answer: dict[str, Any]) -> str:
    """The IP a pod server's JSON answer says the request came from."""
    return str(SocketAddr.parse(answer["client"]).host)


@pytest.fixture(scope="module")
def bpffs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory on a bpffs of its own, for one test module."""
    root = tmp_path_factory.mktemp("bpffs") / "pins"
    mounted = ensure_bpffs(root)
    try:
        yield root
    finally:
        if mounted is not None:
            unmount(mounted)


@pytest.fixture
def pin_dir(bpffs: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """An empty pin directory for one test, emptied again afterwards."""
    path = bpffs / request.node.name
    path.mkdir()
    try:
        yield path
    finally:
        for pin in path.iterdir():
            pin.unlink()
        path.rmdir()
