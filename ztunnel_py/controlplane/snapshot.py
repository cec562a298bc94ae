"""The mesh snapshot contract between the configuration pipeline and the xDS server.

A `MeshSnapshot` is an immutable view of the translated mesh at one version: the workload API's
workloads, services and authorization policies, which every client may see, and the waypoints'
L7 configuration: one `HttpService` per service bound to a waypoint, and per waypoint a
`WaypointScope` saying which of them it is sent, the policies and request authentications that
target it (as it applies them) and the pods allowed to ask for them. A `SnapshotSource` (the
ConfigStore) hands out the current snapshot and notifies subscribers after each change;
`changed` computes the per-type delta the xDS server sends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ztunnel_py.model import Authorization, GatewayAddress, Service, Workload
from ztunnel_py.model.authn import WaypointAuthentication
from ztunnel_py.model.http import HttpService
from ztunnel_py.model.policy import WaypointPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class WaypointScope:
    """What one waypoint (its Gateway `namespace/name`) is served, and who may ask for it."""

    name: str
    # where clients reach it (None: not ready, so nothing is bound to it yet)
    address: GatewayAddress | None = None
    # its pods, "namespace/name" -> node: a waypoint's xDS stream must come from one of them
    instances: Mapping[str, str] = field(default_factory=dict)
    # the HttpServices (by name) of the services bound to it
    services: frozenset[str] = frozenset()
    # the policies that target it, as this waypoint applies them (by "namespace/name")
    policies: Mapping[str, WaypointPolicy] = field(default_factory=dict)
    # the RequestAuthentications that target it, keys resolved (by "namespace/name")
    authentications: Mapping[str, WaypointAuthentication] = field(default_factory=dict)


@dataclass(frozen=True)
class MeshSnapshot:
    version: int  # increases on every change
    workloads: Mapping[str, Workload] = field(default_factory=dict)  # by uid (xDS resource name)
    services: Mapping[str, Service] = field(default_factory=dict)  # by "namespace/hostname"
    policies: Mapping[str, Authorization] = field(default_factory=dict)  # by "namespace/name"
    # by "namespace/hostname" of the service
    http_services: Mapping[str, HttpService] = field(default_factory=dict)
    # by "namespace/name" of the waypoint's Gateway
    waypoints: Mapping[str, WaypointScope] = field(default_factory=dict)


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
