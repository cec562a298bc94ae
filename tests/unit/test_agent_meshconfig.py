"""Istio's MeshConfig as the agent reads it from the mounted `istio` ConfigMap: the
outboundTrafficPolicy mode, the defaults when the file is missing, and the last good setting
kept when an edit breaks it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ztunnel_py.agent.meshconfig import (
    ALLOW_ANY,
    REGISTRY_ONLY,
    MeshConfig,
    MeshConfigError,
    MeshConfigWatch,
    load,
    parse,
)


def test_modes_and_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "missing") == MeshConfig(ALLOW_ANY)
    assert parse("", "mesh") == MeshConfig(ALLOW_ANY)
    assert parse("accessLogFile: /dev/stdout\n", "mesh") == MeshConfig(ALLOW_ANY)
    registry = parse("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n", "mesh")
    assert registry.registry_only


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("outboundTrafficPolicy: {mode: BLOCK}", "'BLOCK' is not one of ALLOW_ANY, REGISTRY_ONLY"),
        ("outboundTrafficPolicy: REGISTRY_ONLY", "outboundTrafficPolicy must be a mapping"),
        ("- a list", "a MeshConfig is a mapping"),
        ("mode: [", "not YAML"),
    ],
)
def test_bad_mesh_config_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(MeshConfigError, match=message.replace("[", r"\[")):
        parse(text, "mesh")


def test_the_watch_follows_edits_and_keeps_the_last_good_setting(tmp_path: Path) -> None:
    path = tmp_path / "mesh"
    watch = MeshConfigWatch(path)
    assert not watch.current.registry_only

    path.write_text(f"outboundTrafficPolicy: {{mode: {REGISTRY_ONLY}}}\n")
    watch.refresh()
    assert watch.current.registry_only

    path.write_text("outboundTrafficPolicy: {mode: nonsense}\n")
    os.utime(path, (1, 1))  # a new modification time, whatever the clock's resolution
    watch.refresh()
    assert watch.current.registry_only

    path.unlink()
    watch.refresh()
    assert not watch.current.registry_only
