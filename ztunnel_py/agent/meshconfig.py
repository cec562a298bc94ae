"""The parts of Istio's MeshConfig the agent applies, read from the `istio` ConfigMap's `mesh`
key as Istio's proxies mount it (`/etc/istio/config/mesh`).

Only `outboundTrafficPolicy.mode` is read: `ALLOW_ANY` (the default) lets a pod connect to any
address, as plain TCP when the mesh does not know it; `REGISTRY_ONLY` refuses outbound
connections to addresses that are neither a service VIP nor a workload of the mesh, so hosts
outside the cluster are reachable only through a ServiceEntry (and, with `istio.io/use-waypoint`
on it, only through its egress waypoint), as Istio's sidecars send such traffic to their
BlackHoleCluster. ztunnel itself has no such setting (Istio's docs point ambient users at
NetworkPolicy); the agent applies the mesh-wide setting Istio users already write.

The file is watched (`watch`: its modification time, every `POLL_SECONDS`), as a mounted
ConfigMap changes in place; a file that is missing means the defaults, and one that cannot be
read or says something else keeps the last good setting, with the problem logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

log = logging.getLogger("ztunnel_py.meshconfig")

ALLOW_ANY = "ALLOW_ANY"
REGISTRY_ONLY = "REGISTRY_ONLY"
MODES = (ALLOW_ANY, REGISTRY_ONLY)
POLL_SECONDS = 1.0


class MeshConfigError(Exception):
    """The mesh configuration cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class MeshConfig:
    outbound_traffic_policy: str = ALLOW_ANY

    @property
    def registry_only(self) -> bool:
        return self.outbound_traffic_policy == REGISTRY_ONLY


def parse(text: str, source: str) -> MeshConfig:
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MeshConfigError(f"{source}: not YAML: {e}") from e
    if doc is None:
        return MeshConfig()
    if not isinstance(doc, Mapping):
        raise MeshConfigError(f"{source}: a MeshConfig is a mapping")
    policy = doc.get("outboundTrafficPolicy") or {}
    if not isinstance(policy, Mapping):
        raise MeshConfigError(f"{source}: outboundTrafficPolicy must be a mapping")
    mode = policy.get("mode", ALLOW_ANY)
    if mode not in MODES:
        raise MeshConfigError(
            f"{source}: outboundTrafficPolicy.mode {mode!r} is not one of {', '.join(MODES)}"
        )
    return MeshConfig(str(mode))


def load(path: Path) -> MeshConfig:
    """The file's settings; the defaults when it does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return MeshConfig()
    except OSError as e:
        raise MeshConfigError(f"cannot read {path}: {e.strerror}") from e
    return parse(text, str(path))


class MeshConfigWatch:
    """The current mesh configuration of one file, kept up to date by `watch`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = load(path)
        self._stamp = self._mtime()

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def refresh(self) -> None:
        stamp = self._mtime()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            fresh = load(self.path)
        except MeshConfigError as e:
            log.error(
                "%s; keeping outboundTrafficPolicy %s", e, self.current.outbound_traffic_policy
            )
            return
        if fresh != self.current:
            log.info("mesh config: outboundTrafficPolicy %s", fresh.outbound_traffic_policy)
        self.current = fresh

    async def watch(self) -> None:
        while True:
            await trio.sleep(POLL_SECONDS)
            self.refresh()
