"""The kinds the control plane accepts: one table built from the API group modules.

Each group module (`core.py` for core/v1, `istio_networking.py`, `istio_security.py`,
`gateway_api.py`, `flagger.py`) owns its kinds' schemas and semantic rules and lists them in
`KINDS`. To check more of a kind, refine its schema constants there; a rule that needs several
fields is an `Obj` hook next to the schema it belongs to; a new kind is a schema and a `KindInfo`
(usually `kube.custom_resource`) in its group's module, and a new API group is a module added to
`GROUPS`.
"""

from __future__ import annotations

from ztunnel_py.controlplane.validation import (
    core,
    flagger,
    gateway_api,
    istio_networking,
    istio_security,
)
from ztunnel_py.controlplane.validation.kube import KindInfo

GROUPS = (core, istio_networking, istio_security, gateway_api, flagger)

KINDS: dict[str, KindInfo] = {info.kind: info for group in GROUPS for info in group.KINDS}
