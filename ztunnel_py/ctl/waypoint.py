"""`ztunnel-py waypoint generate|apply|list|delete`, as `istioctl waypoint`.

- generate: print the Gateway (`gateway.networking.k8s.io/v1`, class `istio-waypoint`, one
  listener `mesh` on 15008, protocol HBONE, label `istio.io/waypoint-for`); with `--deployment`
  also what a cluster runs for it (`waypoint.yaml`, the template deploy/waypoint/ links to:
  ServiceAccount, Deployment running `ztunnel-py waypoint run`, Service), since our control
  plane creates no Deployments. Pipe it to `kubectl apply -f -`.
- apply / delete / list: on the testbed, whose gateway controller starts and stops the waypoint
  pod (`testbed apply`); `apply --enroll-namespace` also labels the namespace
  `istio.io/use-waypoint=<name>`, keeping its other labels.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml

from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.resources import ObjectRef
from ztunnel_py.testbed.testbed import Testbed

DEFAULT_NAME = "waypoint"
WAYPOINT_FOR = ("service", "workload", "all", "none")
TEMPLATE = "waypoint.yaml"
TEMPLATE_NAME, TEMPLATE_NAMESPACE = "waypoint", "default"


def gateway(name: str, namespace: str, waypoint_for: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"istio.io/waypoint-for": waypoint_for},
        },
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def _rename(value: Any, name: str) -> Any:
    """The template with every mention of the template's Gateway name replaced (names, labels,
    the service account, `--gateway-name`), but not the command `waypoint run`."""
    if isinstance(value, dict):
        return {
            k: [_gateway_flag(a, name) for a in v] if k == "args" else _rename(v, name)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rename(v, name) for v in value]
    return name if value == TEMPLATE_NAME else value


def _gateway_flag(arg: str, name: str) -> str:
    return f"--gateway-name={name}" if arg.startswith("--gateway-name=") else arg


def deployment(name: str, namespace: str, image: str | None = None) -> list[dict[str, Any]]:
    """The template's objects for Gateway `namespace/name`."""
    text = resources.files("ztunnel_py.ctl").joinpath(TEMPLATE).read_text()
    docs = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        doc = _rename(copy.deepcopy(doc), name)
        doc["metadata"]["namespace"] = namespace
        if image is not None and doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
        docs.append(doc)
    return docs


def generate_text(args: argparse.Namespace) -> str:
    docs = [gateway(args.name, args.namespace, args.waypoint_for)]
    if args.deployment:
        docs += deployment(args.name, args.namespace, args.image)
    return yaml.safe_dump_all(docs, sort_keys=False)


def _namespace_doc(bed: Testbed, namespace: str, waypoint: str) -> dict[str, Any]:
    labels = dict(bed.state.namespace_labels.get(namespace, {}))
    path = bed.config_dir / ObjectRef("Namespace", "", namespace).file_name
    if path.exists():
        current = yaml.safe_load(path.read_text()) or {}
        labels.update((current.get("metadata") or {}).get("labels") or {})
    labels["istio.io/use-waypoint"] = waypoint
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": labels},
    }


def apply(
    bed: Testbed,
    name: str,
    namespace: str,
    waypoint_for: str = "service",
    enroll_namespace: bool = False,
    progress: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> None:
    """`istioctl waypoint apply`: the waypoint's Gateway and, with `enroll_namespace`, the
    namespace's `istio.io/use-waypoint` label; TestbedError if the testbed rejects them."""
    docs = [gateway(name, namespace, waypoint_for)]
    if enroll_namespace:
        docs.append(_namespace_doc(bed, namespace, name))
    bed.apply(yaml.safe_dump_all(docs), "waypoint apply", progress=progress, timeout=timeout)


def main(args: argparse.Namespace) -> int:
    command: str = args.waypoint_command
    if command == "generate":
        sys.stdout.write(generate_text(args))
        return 0
    try:
        bed = Testbed.attach(args.prefix)
        if command == "apply":
            apply(
                bed,
                args.name,
                args.namespace,
                args.waypoint_for,
                args.enroll_namespace,
                timeout=args.timeout,
            )
            print(f"waypoint {args.namespace}/{args.name} applied")
            return 0
        if command == "delete":
            status = bed.status()
            names = (
                [w.gateway for w in status.waypoints if w.namespace == args.namespace]
                if args.all
                else args.names
            )
            if not names:
                print(f"no waypoints in namespace {args.namespace}")
                return 0
            docs = [gateway(n, args.namespace, "service") for n in names]
            for ref, existed in bed.delete(yaml.safe_dump_all(docs), "waypoint delete"):
                print(
                    f"waypoint {args.namespace}/{ref.name} "
                    + ("deleted" if existed else "not found")
                )
            return 0
        return _list(bed, args)
    except TestbedError as e:
        print(f"ztunnel-py waypoint {command}: {e}", file=sys.stderr)
        return 1


def _list(bed: Testbed, args: argparse.Namespace) -> int:
    from ztunnel_py.ctl.tables import render

    waypoints = [
        w for w in bed.status().waypoints if args.all_namespaces or w.namespace == args.namespace
    ]
    if not waypoints:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No waypoints found in {where}.")
        return 0
    rows: list[tuple[str, ...]] = [
        (w.namespace, w.gateway, "default", "True" if w.process.alive else "False")
        for w in sorted(waypoints, key=lambda w: (w.namespace, w.gateway))
    ]
    columns: tuple[str, ...] = ("NAMESPACE", "NAME", "REVISION", "PROGRAMMED")
    if not args.all_namespaces:
        columns, rows = columns[1:], [r[1:] for r in rows]
    print(render(columns, rows))
    return 0
