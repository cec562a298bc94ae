"""WasmPlugin-shaped resources to the user filters of the HttpServices they target.

A plugin (validated: `url: python://<entry point name>`) targets waypoints as an
AuthorizationPolicy does (a waypoint's Gateway, a Service or ServiceEntry bound to a waypoint,
or the GatewayClass `istio-waypoint` from the root namespace); a plugin with a selector, or with
no target, is for sidecars and gateways, which waypoints ignore. Each HttpService lists its
filters by phase (AUTHN, AUTHZ, STATS, then unspecified), then priority (highest first), then
age (oldest first), which is the order Istio gives WasmPlugins of one phase.
"""

from __future__ import annotations

from collections.abc import Iterable

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.translate.routes import creation_order
from ztunnel_py.controlplane.validation.extensions import PYTHON_SCHEME
from ztunnel_py.model.http import FilterConfig, FilterPhase

_PHASE_ORDER = {
    FilterPhase.AUTHN: 0,
    FilterPhase.AUTHZ: 1,
    FilterPhase.STATS: 2,
    FilterPhase.UNSPECIFIED: 3,
}


def filter_config(plugin: Resource) -> FilterConfig:
    spec = plugin.spec
    return FilterConfig(
        name=spec["url"][len(PYTHON_SCHEME) :],
        phase=FilterPhase(spec.get("phase", FilterPhase.UNSPECIFIED.value)),
        priority=spec.get("priority", 0),
        config=dict(spec.get("pluginConfig") or {}),
        fail_open=spec.get("failStrategy") == "FAIL_OPEN",
        origin=f"WasmPlugin {plugin.namespace}/{plugin.name}",
    )


def ordered(plugins: Iterable[Resource]) -> tuple[FilterConfig, ...]:
    """The filters of `plugins` in chain order."""

    def key(plugin: Resource) -> tuple[int, int, tuple[str, str, str]]:
        f = filter_config(plugin)
        return _PHASE_ORDER[f.phase], -f.priority, creation_order(plugin)

    return tuple(filter_config(p) for p in sorted(set(plugins), key=key))
