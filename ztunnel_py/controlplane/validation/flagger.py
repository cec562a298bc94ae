"""flagger.app: the `Canary` the canary controller (`ztunnel-py canary`) runs, validated where
every other resource is, so a mistake in one shows in the control plane's `/debug/config` and
log with its file, line and field. The format itself (shared with the controller) lives in
`ztunnel_py/flagger/canary.py`; this module adds what only the control plane can check deeper:
`spec.service.trafficPolicy` against the DestinationRule traffic policy schema, since the
controller copies it into the DestinationRule it writes.

The control plane translates nothing from a Canary: the controller's VirtualService and
DestinationRule changes are what reach the waypoints.
"""

from __future__ import annotations

from collections.abc import Mapping

from ztunnel_py.controlplane.validation.kube import custom_resource
from ztunnel_py.controlplane.validation.traffic_policy import TRAFFIC_POLICY
from ztunnel_py.flagger import canary
from ztunnel_py.yamlschema.schema import Checker, Node


def _traffic_policy(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    spec = fields.get("spec")
    service = spec.value.get("service") if spec is not None else None
    if isinstance(service, dict) and service.get("trafficPolicy") is not None:
        service_node = c.child(spec, "service")  # type: ignore[arg-type]
        TRAFFIC_POLICY.check(c, c.child(service_node, "trafficPolicy"))


KINDS = (custom_resource(canary.KIND, canary.API_VERSIONS, canary.SPEC, hooks=(_traffic_policy,)),)
