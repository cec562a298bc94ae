"""Which identities each node hosts: the knowledge the CA needs for node authorization.

`WorkloadRegistry` is the interface the CA asks. `LocalConfigRegistry` answers from a YAML file in
ztunnel's local-config format (docs/istio-compat.md, "Local configuration file"): only the
`workloads` list matters here (`namespace`, `serviceAccount`, `trustDomain`, `node`); services and
policies are other code's business. The file is re-read when it changes; a broken edit is reported
and the previous contents stay in force, so a typo never revokes every node's certificates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from ztunnel_py.model.identity import DEFAULT_TRUST_DOMAIN, Identity

log = logging.getLogger("ztunnel_py.controlplane.registry")

_MISSING = (-1, -1, -1)


class WorkloadRegistry(Protocol):
    def identities_on_node(self, node: str) -> frozenset[Identity]:
        """Every identity of a workload scheduled on `node` (empty if none or unknown)."""
        ...


class EmptyRegistry:
    """No workloads anywhere (no source configured): every signing request is refused."""

    def identities_on_node(self, node: str) -> frozenset[Identity]:
        return frozenset()


class LocalConfigError(ValueError):
    """The local config file cannot be used; the message names the file and the entry."""


def parse_workload_nodes(text: str, source: str = "local config") -> dict[str, frozenset[Identity]]:
    """Map node -> identities from local-config YAML; workloads without a node are skipped."""
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LocalConfigError(f"{source}: not valid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise LocalConfigError(f"{source}: top level must be a mapping with a 'workloads' key")
    workloads = doc.get("workloads") or []
    if not isinstance(workloads, list):
        raise LocalConfigError(f"{source}: 'workloads' must be a list")
    nodes: dict[str, set[Identity]] = {}
    for index, w in enumerate(workloads):
        where = f"{source}: workloads[{index}]"
        if not isinstance(w, Mapping):
            raise LocalConfigError(f"{where} must be a mapping")
        namespace = _string(w, "namespace", where, "")
        if not namespace:
            raise LocalConfigError(f"{where} has no 'namespace'")
        account = _string(w, "serviceAccount", where, "default") or "default"
        domain = _string(w, "trustDomain", where, DEFAULT_TRUST_DOMAIN) or DEFAULT_TRUST_DOMAIN
        node = _string(w, "node", where, "")
        if node:
            nodes.setdefault(node, set()).add(Identity(domain, namespace, account))
    return {node: frozenset(ids) for node, ids in nodes.items()}


def _string(entry: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = entry.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise LocalConfigError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


class LocalConfigRegistry:
    """A `WorkloadRegistry` backed by a local-config file, reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._nodes: dict[str, frozenset[Identity]] = {}
        self._stamp: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        return self._path

    def identities_on_node(self, node: str) -> frozenset[Identity]:
        with self._lock:
            return self._nodes.get(node, frozenset())

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stamp changed; returns True if the contents were replaced.

        Raises `LocalConfigError` (previous contents kept) if the file is broken, and
        `OSError` if it cannot be read.
        """
        try:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            if self._stamp == _MISSING:
                return False
            self._stamp = _MISSING
            raise LocalConfigError(f"{self._path}: file not found") from None
        if stamp == self._stamp:
            return False
        # Record the stamp first: a broken file is reported once, not every poll.
        self._stamp = stamp
        nodes = parse_workload_nodes(self._path.read_text(), str(self._path))
        with self._lock:
            self._nodes = nodes
        return True

    def watch(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Poll the file until `stop` is set, logging each reload or error (run in a thread)."""
        while not stop.wait(interval):
            self.reload_logged()

    def reload_logged(self) -> None:
        try:
            if self.reload_if_changed():
                log.info("loaded %s: %s", self._path, self.summary())
        except (LocalConfigError, OSError) as e:
            log.error("%s; keeping the previous workloads", e)

    def summary(self) -> str:
        with self._lock:
            count = sum(len(ids) for ids in self._nodes.values())
            return f"{count} identities on {len(self._nodes)} nodes"
