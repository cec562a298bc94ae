"""Kubernetes-shaped objects for the waypoint translation tests, as YAML text (what a user
writes into the configuration directory), and the translation of a set of them."""

from __future__ import annotations

from typing import Any

import yaml

from tests.unit.cp_support import store_with
from ztunnel_py.controlplane.resources import Diagnostic
from ztunnel_py.controlplane.translate import Translation, translate

GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"


def documents(*objects: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False) for o in objects)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def gateway(
    name: str = "waypoint",
    ns: str = "apps",
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    allowed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed is not None:
        listener["allowedRoutes"] = {"namespaces": allowed}
    out: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [listener]},
    }
    if status is not None:
        out["status"] = status
    return out


def waypoint_service(name: str = "waypoint", ns: str = "apps", ip: str = "10.96.9.1") -> dict:
    """The Service the testbed creates for a waypoint Gateway."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": ip,
            "selector": {GATEWAY_NAME: name},
            "ports": [
                {"name": "mesh", "port": 15008, "appProtocol": "hbone"},
                {"name": "status", "port": 15021},
            ],
        },
    }


def waypoint_pod(
    gateway_name: str = "waypoint", ns: str = "apps", ip: str = "10.1.9.1", node: str = "node-1"
) -> dict[str, Any]:
    return pod(
        f"{gateway_name}-0",
        ns,
        ip,
        node,
        labels={GATEWAY_NAME: gateway_name, "istio.io/dataplane-mode": "none"},
        account=gateway_name,
    )


def waypoint(name: str = "waypoint", ns: str = "apps", ip_suffix: int = 1, **kw: Any) -> str:
    """A ready waypoint: Gateway, Service and pod, as the testbed deploys them."""
    return documents(
        gateway(name, ns, **kw),
        waypoint_service(name, ns, f"10.96.9.{ip_suffix}"),
        waypoint_pod(name, ns, f"10.1.9.{ip_suffix}"),
    )


def service(
    name: str,
    ns: str = "apps",
    ip: str = "10.96.0.10",
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "clusterIP": ip,
            "selector": selector if selector is not None else {"app": name},
            "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


def pod(
    name: str,
    ns: str = "apps",
    ip: str = "10.1.0.10",
    node: str = "node-1",
    labels: dict[str, str] | None = None,
    account: str = "default",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "containers": [{"name": "app", "image": "app"}],
        },
        # Ready: only a Ready pod's endpoints are HEALTHY (Kubernetes' endpoint rule)
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def translation(*texts: str) -> tuple[Translation, list[Diagnostic]]:
    """The translation of the documents, and every diagnostic (validation errors fail)."""
    store = store_with(("f.yaml", "---\n".join(texts)))
    errors = [str(d) for d in store.diagnostics() if d.is_error]
    assert not errors, errors
    t = translate(store.resources().values())
    return t, list(t.diagnostics)


def warnings(diagnostics: list[Diagnostic]) -> list[str]:
    return [f"{d.path}: {d.reason}" for d in diagnostics if not d.is_error]
