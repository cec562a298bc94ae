"""Fixtures for kernel tests: a shared no-mesh testbed with a unique prefix, always torn down."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

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
