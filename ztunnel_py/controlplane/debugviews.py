"""`/debug/waypoints`: what each waypoint is served, as JSON (the control plane's view of the L7
configuration; problems found while building it are in `/debug/config` and in
`controlplane validate`).

Model objects are rendered field by field: enums by value, sets sorted, fields computed for
speed (compiled patterns, flags) left out.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from ztunnel_py.controlplane.snapshot import MeshSnapshot
from ztunnel_py.model import GatewayAddress
from ztunnel_py.model.authn import WaypointAuthentication


def jsonable(value: object) -> Any:
    """A model value as JSON-compatible data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init and f.repr
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _address(address: GatewayAddress | None) -> str | None:
    if address is None:
        return None
    return f"{address.destination}:{address.hbone_mtls_port}"


def _authentication(a: WaypointAuthentication) -> dict[str, Any]:
    """A request authentication with each key set summarized (the keys themselves are long)."""
    view: dict[str, Any] = jsonable(a)
    for rule in view["rules"]:
        keys = rule.pop("jwks")
        rule["jwks"] = f"{len(keys)} bytes" if keys else None
    return view


def waypoints_view(snapshot: MeshSnapshot) -> dict[str, Any]:
    return {
        "version": snapshot.version,
        "waypoints": {
            name: {
                "address": _address(scope.address),
                "ready": scope.address is not None,
                "pods": dict(scope.instances),
                "httpServices": {
                    key: jsonable(snapshot.http_services[key])
                    for key in sorted(scope.services)
                    if key in snapshot.http_services
                },
                "policies": {key: jsonable(p) for key, p in sorted(scope.policies.items())},
                "requestAuthentications": {
                    key: _authentication(a) for key, a in sorted(scope.authentications.items())
                },
            }
            for name, scope in sorted(snapshot.waypoints.items())
        },
    }
