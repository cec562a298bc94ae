"""ConfigStore: the control plane's configuration state and its single point of change.

Sources (a directory of YAML files, the Kubernetes API) hand the store the current contents of
what changed, keyed by source name (a file path, a Kubernetes object): `apply` validates it,
keeps the last good version of every resource whose new version is invalid, resolves conflicts
between sources (the same object defined twice, two Services on one clusterIP: the one already
served wins), translates the accepted set, and publishes a new `MeshSnapshot` when the mesh
changed. Nothing a source hands in can make it raise or lose the state it serves.

The store is the xDS server's `SnapshotSource` and the CA's `WorkloadRegistry`: the identities
hosted on node N are those of the Pods with `spec.nodeName: N`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from ztunnel_py.controlplane.resources import (
    Diagnostic,
    Origin,
    Resource,
    ResourceKey,
)
from ztunnel_py.controlplane.snapshot import EMPTY_SNAPSHOT, MeshSnapshot
from ztunnel_py.controlplane.sources.yamldocs import Parsed
from ztunnel_py.controlplane.translate import JwksSource, MeshOptions, TranslationCache, translate
from ztunnel_py.controlplane.translate.services import cluster_ips
from ztunnel_py.controlplane.validation import validate_document
from ztunnel_py.model import Identity, IPAddress
from ztunnel_py.yamlschema.problems import Severity

log = logging.getLogger("ztunnel_py.controlplane.store")

Subscriber = Callable[[MeshSnapshot], None]


@dataclass(frozen=True, slots=True)
class _SourceState:
    accepted: Mapping[ResourceKey, Resource]
    diagnostics: tuple[Diagnostic, ...]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    snapshot: MeshSnapshot
    changed: bool
    # diagnostics that were not reported by the previous apply
    new_diagnostics: tuple[Diagnostic, ...]


class ConfigStore:
    def __init__(
        self,
        options: MeshOptions | None = None,
        *,
        report: bool = True,
        keys: JwksSource | None = None,
    ) -> None:
        """`report`: log new diagnostics and snapshot versions (off for one-shot tools);
        `keys`: where JWT key sets come from (None: not fetched, as for one-shot tools)."""
        self.options = options or MeshOptions()
        self._report = report
        self._keys = keys
        self._apply_lock = threading.Lock()
        self._sources: dict[str, _SourceState] = {}
        self._accepted: dict[ResourceKey, Resource] = {}
        self._diagnostics: tuple[Diagnostic, ...] = ()
        self._snapshot = EMPTY_SNAPSHOT
        self._nodes: dict[str, frozenset[Identity]] = {}
        self._cache = TranslationCache()
        self._subscribers: list[Subscriber] = []
        self._subscribers_lock = threading.Lock()

    # --- SnapshotSource ------------------------------------------------------------------------

    def current(self) -> MeshSnapshot:
        return self._snapshot

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """`callback(snapshot)` runs after each change, on the thread that applied it; it must
        not call `apply` (it may call `current`)."""
        with self._subscribers_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._subscribers_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # --- WorkloadRegistry ----------------------------------------------------------------------

    def identities_on_node(self, node: str) -> frozenset[Identity]:
        return self._nodes.get(node, frozenset())

    # --- inspection ----------------------------------------------------------------------------

    def diagnostics(self) -> tuple[Diagnostic, ...]:
        """Every current problem (errors and warnings) across all sources."""
        return self._diagnostics

    def resources(self) -> Mapping[ResourceKey, Resource]:
        """The accepted resources (including kinds that are stored but not translated yet)."""
        return self._accepted

    # --- change --------------------------------------------------------------------------------

    def apply(self, changes: Mapping[str, Parsed | None]) -> ApplyResult:
        """Replace the contents of the named sources (None: the source is gone) in one step."""
        with self._apply_lock:
            for source, content in sorted(changes.items()):
                previous = self._sources.get(source)
                if content is None:
                    self._sources.pop(source, None)
                else:
                    self._sources[source] = _evaluate(content, previous)
            accepted, conflicts = self._resolve()
            translation = translate(accepted.values(), self.options, self._cache, self._keys)
            self._cache = translation.cache
            diagnostics = (
                tuple(d for state in self._sources.values() for d in state.diagnostics)
                + tuple(conflicts)
                + translation.diagnostics
            )
            seen = set(self._diagnostics)
            fresh = tuple(d for d in diagnostics if d not in seen)
            self._diagnostics = diagnostics
            self._accepted = accepted
            self._nodes = _nodes(accepted.values(), self.options.trust_domain)
            old = self._snapshot
            changed = (
                translation.workloads != old.workloads
                or translation.services != old.services
                or translation.policies != old.policies
                or translation.http_services != old.http_services
                or translation.waypoints != old.waypoints
            )
            if changed:
                self._snapshot = MeshSnapshot(
                    old.version + 1,
                    translation.workloads,
                    translation.services,
                    translation.policies,
                    translation.http_services,
                    translation.waypoints,
                )
            if self._report:
                _log(fresh)
            if changed and self._report:
                s = self._snapshot
                log.info(
                    "configuration version %d: %d workloads, %d services, %d policies, "
                    "%d waypoints, %d HTTP services",
                    s.version,
                    len(s.workloads),
                    len(s.services),
                    len(s.policies),
                    len(s.waypoints),
                    len(s.http_services),
                )
            if changed:
                self._notify(self._snapshot)
            return ApplyResult(self._snapshot, changed, fresh)

    def refresh(self) -> ApplyResult:
        """Translate the same resources again: something they refer to outside the
        configuration changed (a JWT key set)."""
        return self.apply({})

    def _notify(self, snapshot: MeshSnapshot) -> None:
        with self._subscribers_lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(snapshot)
            except Exception:
                log.exception("snapshot subscriber %r failed", callback)

    def _resolve(self) -> tuple[dict[ResourceKey, Resource], list[Diagnostic]]:
        """One resource per key, one Service per clusterIP; the one already served wins."""
        conflicts: list[Diagnostic] = []
        candidates: dict[ResourceKey, list[Resource]] = defaultdict(list)
        for state in self._sources.values():
            for key, resource in state.accepted.items():
                candidates[key].append(resource)
        accepted: dict[ResourceKey, Resource] = {}
        for key, found in candidates.items():
            winner = _incumbent(found, self._accepted.get(key))
            accepted[key] = winner
            for other in found:
                if other is not winner:
                    conflicts.append(
                        Diagnostic(
                            other.origin,
                            "metadata.name",
                            f"duplicate {key}: already defined at {winner.origin}; ignored",
                        )
                    )
        self._resolve_cluster_ips(accepted, conflicts)
        return dict(sorted(accepted.items())), conflicts

    def _resolve_cluster_ips(
        self, accepted: dict[ResourceKey, Resource], conflicts: list[Diagnostic]
    ) -> None:
        owners: dict[IPAddress, Resource] = {}
        services = [r for r in accepted.values() if r.kind == "Service"]
        # Services already served claim their IPs first (unchanged ones before new versions),
        # then the others in file order: a Service that lost its IP to another is not served
        # again because the owner changed (a kept last-good resource may reappear here).
        services.sort(
            key=lambda r: (r.key not in self._accepted, self._accepted.get(r.key) != r, r.origin)
        )
        for service in services:
            clash = _clash(service, owners)
            if clash is None:
                _claim(service, owners)
                continue
            ip, owner = clash
            conflicts.append(
                Diagnostic(
                    service.origin,
                    "spec.clusterIP",
                    f"clusterIP {ip} is already used by {owner.key} ({owner.origin}); "
                    f"{service.key} rejected",
                )
            )
            previous = self._accepted.get(service.key)
            if previous is not None and previous != service and _clash(previous, owners) is None:
                accepted[service.key] = previous
                _claim(previous, owners)
            else:
                del accepted[service.key]


def _clash(service: Resource, owners: Mapping[IPAddress, Resource]) -> tuple[str, Resource] | None:
    for text in cluster_ips(service):
        owner = owners.get(ipaddress.ip_address(text))
        if owner is not None and owner.key != service.key:
            return text, owner
    return None


def _claim(service: Resource, owners: dict[IPAddress, Resource]) -> None:
    for text in cluster_ips(service):
        owners[ipaddress.ip_address(text)] = service


def _incumbent(found: list[Resource], served: Resource | None) -> Resource:
    if served is not None:
        for resource in found:
            if resource.origin.source == served.origin.source:
                return resource
    return min(found, key=lambda r: r.origin)


def _evaluate(content: Parsed, previous: _SourceState | None) -> _SourceState:
    """Validate a source's new contents, falling back to its last good resources."""
    before: Mapping[ResourceKey, Resource] = previous.accepted if previous is not None else {}
    if content.error is not None:
        kept = f"; keeping the previous contents ({len(before)} resources)" if before else ""
        return _SourceState(before, (replace(content.error, reason=content.error.reason + kept),))
    accepted: dict[ResourceKey, Resource] = {}
    diagnostics: list[Diagnostic] = []
    rejected: dict[ResourceKey, Origin] = {}
    unidentified = False
    for doc in content.documents:
        for outcome in validate_document(doc):
            diagnostics.extend(outcome.diagnostics)
            resource, key = outcome.resource, outcome.key
            if resource is not None and key is not None:
                if key in accepted:
                    diagnostics.append(
                        Diagnostic(
                            resource.origin,
                            "metadata.name",
                            f"duplicate {key}: already defined at {accepted[key].origin}; ignored",
                        )
                    )
                else:
                    accepted[key] = resource
            elif key is not None:
                rejected.setdefault(key, doc.origin)
            elif not outcome.skipped:
                unidentified = True
    for key, origin in rejected.items():
        if key not in accepted and key in before:
            accepted[key] = before[key]
            diagnostics.append(
                Diagnostic(
                    origin,
                    "",
                    f"{key} rejected: still serving its last good version",
                    Severity.WARNING,
                )
            )
    if unidentified:
        # A document we cannot name may be the new version of any previous resource: keep them.
        for key, resource in before.items():
            accepted.setdefault(key, resource)
    return _SourceState(accepted, tuple(diagnostics))


def _nodes(resources: Iterable[Resource], trust_domain: str) -> dict[str, frozenset[Identity]]:
    nodes: dict[str, set[Identity]] = defaultdict(set)
    for r in resources:
        if r.kind != "Pod":
            continue
        spec = r.spec
        node = spec.get("nodeName")
        if not node or r.status.get("phase") in ("Succeeded", "Failed"):
            continue
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        nodes[node].add(Identity(trust_domain, r.namespace, account))
    return {node: frozenset(ids) for node, ids in nodes.items()}


def _log(diagnostics: tuple[Diagnostic, ...]) -> None:
    for d in diagnostics:
        if d.is_error:
            log.error("%s", d)
        elif d.severity is Severity.WARNING:
            log.warning("%s", d)
        else:
            log.info("%s", d)
