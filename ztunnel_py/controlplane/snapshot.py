"""The mesh snapshot contract between the configuration pipeline and the xDS server.

A `MeshSnapshot` is an immutable view of the translated mesh (workloads, services,
authorization policies) at one version. A `SnapshotSource` (the ConfigStore) hands out the
current snapshot and notifies subscribers after each change; `changed` computes the per-type
delta the xDS server sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ztunnel_py.model import Authorization, Service, Workload

T = TypeVar("T")


@dataclass(frozen=True)
class MeshSnapshot:
    version: int  # increases on every change
    workloads: Mapping[str, Workload] = field(default_factory=dict)  # by uid (xDS resource name)
    services: Mapping[str, Service] = field(default_factory=dict)  # by "namespace/hostname"
    policies: Mapping[str, Authorization] = field(default_factory=dict)  # by "namespace/name"


class SnapshotSource(Protocol):
    def current(self) -> MeshSnapshot: ...

    def subscribe(self, callback: Callable[[MeshSnapshot], None]) -> Callable[[], None]:
        """`callback` runs (from any thread) after each change; returns an unsubscribe function."""
        ...


def changed(old: Mapping[str, T], new: Mapping[str, T]) -> tuple[dict[str, T], frozenset[str]]:
    """Resources added or modified from `old` to `new` (by name), and names removed."""
    upserts = {name: value for name, value in new.items() if old.get(name) != value}
    removals = frozenset(name for name in old if name not in new)
    return upserts, removals


EMPTY_SNAPSHOT = MeshSnapshot(version=0)
