"""Which identities each node hosts: the knowledge the CA needs for node authorization.

`WorkloadRegistry` is the interface the CA asks. The configuration sources answer it: the
`ConfigStore` (Pods and their `spec.nodeName`) and the development `LocalConfigSource`
(workloads' `node`); `EmptyRegistry` when there is no source.
"""

from __future__ import annotations

from typing import Protocol

from ztunnel_py.model.identity import Identity


class WorkloadRegistry(Protocol):
    def identities_on_node(self, node: str) -> frozenset[Identity]:
        """Every identity of a workload scheduled on `node` (empty if none or unknown)."""
        ...


class EmptyRegistry:
    """No workloads anywhere (no source configured): every signing request is refused."""

    def identities_on_node(self, node: str) -> frozenset[Identity]:
        return frozenset()
