"""`ztunnel-py canary run|status` on a testbed: the canary controller (`canary/`) wired to the
testbed's watched configuration directory and its Prometheus.

`TestbedResources` is the controller's `Resources` there: Canaries are read from the directory
the control plane watches (one file per object, as `testbed apply` writes them), and every
change goes through `Testbed.apply`, so the control plane validates and pushes the
VirtualService and DestinationRule like any user's. Prometheus is the testbed's (10.250.0.3:9090
in its own network namespace, which the controller's sockets are made in) unless
`--prometheus-url` or the Canary's `spec.metricsServer` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import trio
import yaml

from ztunnel_py.canary import report
from ztunnel_py.canary.controller import Controller
from ztunnel_py.canary.store import CANARY_KIND, Document, StoreError
from ztunnel_py.testbed import prometheus, resources
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed


class TestbedResources:
    """The controller's `Resources` on a testbed's watched directory."""

    # pytest collects classes named Test*; this is not a test class.
    __test__ = False

    def __init__(self, bed: Testbed) -> None:
        self._bed = bed

    def _load(self, path: Any) -> Document | None:
        try:
            document = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise StoreError(f"cannot read {path}: {e}") from None
        return document if isinstance(document, dict) else None

    def canaries(self) -> list[Document]:
        found = []
        for path in sorted(self._bed.config_dir.glob(f"{CANARY_KIND.lower()}_*.yaml")):
            document = self._load(path)
            if document is not None and document.get("kind") == CANARY_KIND:
                found.append(document)
        return found

    def get(self, kind: str, namespace: str, name: str) -> Document | None:
        ref = resources.ObjectRef(kind, namespace, name)
        return self._load(self._bed.config_dir / ref.file_name)

    def apply(self, documents: Sequence[Document]) -> None:
        text = yaml.safe_dump_all(list(documents), sort_keys=False)
        try:
            self._bed.apply(text, source="ztunnel-py canary")
        except TestbedError as e:
            raise StoreError(str(e)) from None


def _say(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    url = args.prometheus_url
    connect = None
    if bed.state.prometheus:
        url = url or prometheus.url()
        connect = prometheus.connect_in(prometheus.netns(bed.prefix))
    controller = Controller(TestbedResources(bed), url, connect=connect, say=_say)
    _say(
        f"canary controller on testbed {bed.prefix}: Canaries in {bed.config_dir}, "
        f"Prometheus {url or '(none: give --prometheus-url)'}"
    )

    async def main() -> int:
        with trio.move_on_after(args.timeout if args.timeout else float("inf")):
            return await controller.run(until_done=args.until_done, resync=args.resync)
        _say(f"gave up after {args.timeout:g} s: not every Canary has finished")
        return 2

    return trio.run(main)


def status(args: argparse.Namespace) -> int:
    bed = Testbed.attach(args.prefix, args.state_dir)
    canaries = TestbedResources(bed).canaries()
    if args.json:
        print(json.dumps(canaries, indent=2))
    else:
        print(report.status_text(canaries, steps=args.steps))
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return {"run": run, "status": status}[args.canary_command](args)
    except (TestbedError, StoreError) as e:
        print(f"ztunnel-py canary {args.canary_command}: {e}", file=sys.stderr)
        return 1
