"""The testbed's state directory and its JSON state file, written as things are created.

Every namespace and process is recorded *before* it is created, so that whatever kills `up`
(an error, Ctrl-C, kill -9), `down` knows everything that may exist. The file is replaced
atomically (write, then rename), so a reader never sees half a file.

Layout of a state directory:

    state.json          this file's contents (see `State.to_dict`)
    config/             Kubernetes YAML the control plane watches (`--config-dir`): what the
                        testbed created, what `testbed apply` added (see resources.py), and
                        the Pod and Service of every waypoint (waypoints.py)
    logs/<name>.log     stdout+stderr of every process
    prometheus/         with --prometheus: its prometheus.yml, targets/<job>.json (file-based
                        discovery the testbed rewrites) and data/ (its storage)
    controlplane/       the control plane's data dir (its CA under controlplane/ca/)
    node<i>/            agent state dir of node i: auth token, enrollment socket, the CNI
                        network configuration the testbed hands the plugin (cni-config.json);
                        with --image, host/ is the node's simulated root for the CNI node pod
                        (host/opt/cni/bin, host/etc/cni/net.d, host/run/ztunnel-py/cni)
    sidecars/<pod>/     sidecar mode: the credentials a pod's proxy (uid 1337) reads
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord
from ztunnel_py.testbed.waypoints import WaypointPlan

STATE_FILE = "state.json"
FORMAT_VERSION = 2


class State:
    def __init__(self, state_dir: Path, data: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.prefix: str = str(data["prefix"])
        self.nodes: int = int(data["nodes"])
        self.pods_per_node: int = int(data["pods_per_node"])
        # none, sidecar or ambient (topology.MODES)
        self.mode: str = str(data["mode"])
        # lifetime of workload certificates the agents ask for (their --secret-ttl)
        self.secret_ttl: str = str(data.get("secret_ttl", "24h"))
        self.dual_stack: bool = bool(data.get("dual_stack", False))
        # the proxies reach the control plane at its IPv6 address (Topology.controlplane_ip)
        self.controlplane_ipv6: bool = bool(data.get("controlplane_ipv6", False))
        # the mesh's processes run from this container image (image.py), not the venv
        self.image: str | None = data.get("image") or None
        # a Prometheus scrapes the proxies and the control plane (prometheus.py)
        self.prometheus: bool = bool(data.get("prometheus", False))
        # Kubernetes namespace -> labels (what the CNI plugin decides enrollment by)
        self.namespace_labels: dict[str, dict[str, str]] = {
            str(ns): {str(k): str(v) for k, v in labels.items()}
            for ns, labels in data.get("namespace_labels", {}).items()
        }
        self.complete: bool = bool(data.get("complete", False))
        self.namespaces: list[str] = [str(n) for n in data.get("namespaces", [])]
        self.processes: list[ProcessRecord] = [
            ProcessRecord.from_dict(p) for p in data.get("processes", [])
        ]
        # waypoint pods started by `testbed apply` of a Gateway (their namespaces and processes
        # are in the lists above too, so `down` removes them like everything else)
        self.waypoints: list[WaypointPlan] = [
            WaypointPlan.from_dict(w) for w in data.get("waypoints", [])
        ]

    @property
    def mesh(self) -> bool:
        """A control plane and proxies run (sidecar or ambient mode)."""
        return self.mode != "none"

    @property
    def ambient(self) -> bool:
        """Node agents capture the pods (ambient mode)."""
        return self.mode == "ambient"

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    @classmethod
    def create(
        cls,
        state_dir: Path,
        prefix: str,
        nodes: int,
        pods_per_node: int,
        mode: str,
        secret_ttl: str = "24h",
        dual_stack: bool = False,
        namespace_labels: dict[str, dict[str, str]] | None = None,
        controlplane_ipv6: bool = False,
        image: str | None = None,
        prometheus: bool = False,
    ) -> State:
        """Claim `state_dir` for a new testbed; fails if a testbed (or its remains) is there."""
        try:
            state_dir.mkdir(mode=0o755, parents=True)
        except FileExistsError:
            raise TestbedError(
                f"testbed {prefix} is already up (or was interrupted): {state_dir} exists; "
                f"run `ztunnel-py testbed down --prefix {prefix}` first"
            ) from None
        state = cls(
            state_dir,
            {
                "prefix": prefix,
                "nodes": nodes,
                "pods_per_node": pods_per_node,
                "mode": mode,
                "secret_ttl": secret_ttl,
                "dual_stack": dual_stack,
                "controlplane_ipv6": controlplane_ipv6,
                "namespace_labels": namespace_labels or {},
                "image": image,
                "prometheus": prometheus,
            },
        )
        state.save()
        return state

    @classmethod
    def load(cls, state_dir: Path) -> State | None:
        """The state in `state_dir`, or None if there is no state file."""
        try:
            text = (state_dir / STATE_FILE).read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return cls(state_dir, data)
        except (ValueError, KeyError, TypeError) as exc:
            raise TestbedError(
                f"state file {state_dir / STATE_FILE} is unreadable ({exc}); remove the "
                f"testbed's namespaces with `ip netns delete` and then the directory {state_dir}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "prefix": self.prefix,
            "nodes": self.nodes,
            "pods_per_node": self.pods_per_node,
            "mode": self.mode,
            "secret_ttl": self.secret_ttl,
            "dual_stack": self.dual_stack,
            "controlplane_ipv6": self.controlplane_ipv6,
            "namespace_labels": self.namespace_labels,
            "image": self.image,
            "prometheus": self.prometheus,
            "complete": self.complete,
            "namespaces": self.namespaces,
            "processes": [p.to_dict() for p in self.processes],
            "waypoints": [w.to_dict() for w in self.waypoints],
        }

    def save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, self.path)

    def add_namespace(self, name: str) -> None:
        if name not in self.namespaces:
            self.namespaces.append(name)
            self.save()

    def add_process(self, record: ProcessRecord) -> None:
        self.processes.append(record)
        self.save()

    def replace_process(self, record: ProcessRecord) -> None:
        """Swap in a new record for the process of the same name (a restart), and save."""
        self.processes = [record if r.name == record.name else r for r in self.processes]
        self.save()

    def remove_process(self, name: str) -> None:
        self.processes = [r for r in self.processes if r.name != name]
        self.save()

    def remove_namespace(self, name: str) -> None:
        self.namespaces = [n for n in self.namespaces if n != name]
        self.save()

    def add_waypoint(self, waypoint: WaypointPlan) -> None:
        self.waypoints.append(waypoint)
        self.save()

    def remove_waypoint(self, waypoint: WaypointPlan) -> None:
        self.waypoints = [w for w in self.waypoints if w != waypoint]
        self.save()

    def waypoint(self, namespace: str, gateway: str) -> WaypointPlan | None:
        for waypoint in self.waypoints:
            if (waypoint.namespace, waypoint.gateway) == (namespace, gateway):
                return waypoint
        return None

    def process(self, name: str) -> ProcessRecord | None:
        for record in self.processes:
            if record.name == name:
                return record
        return None

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def config_dir(self) -> Path:
        return self.state_dir / "config"

    @property
    def controlplane_dir(self) -> Path:
        return self.state_dir / "controlplane"

    def node_dir(self, node: str) -> Path:
        return self.state_dir / node
