"""The control plane's xDS server: Delta ADS over the existing gRPC/TLS server.

`XdsServer` serves `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`
for the workload API's Address and Authorization types (docs/istio-compat.md, "Workload xDS"),
which every client sees whole, and for the waypoints' L7 types HttpService, HttpAuthorization and
HttpAuthentication (docs/waypoints.md), which are scoped per stream. It owns:

- the resource index: the current `MeshSnapshot` encoded once per resource with a content
  version (a hash of the encoding, so versions survive control-plane restarts and a reconnecting
  client's `initial_resource_versions` spare it unchanged resources). Resources equal to those
  of the previous snapshot keep their encoding, so a change costs about what it changed;
- debounced pushes: snapshot notifications (from any thread) mark the index dirty; a pusher
  thread waits until changes pause for `debounce` seconds (at most `debounce_max` after the
  first) and then builds one index and wakes every stream. A burst of changes becomes a handful
  of pushes;
- per-stream state: `protocol.xds.ServerStream` decides what to send; each stream answers only
  what changed for it, coalesced: a slow client is sent the latest state, never a backlog;
- authentication with the node credential (the CA's `authorization: Bearer` token):
  UNAUTHENTICATED otherwise; a node whose `NODE_NAME` metadata names another node is refused;
- scoping of the L7 types: a waypoint's node (id `waypoint~<ip>~<pod>.<ns>~...`, metadata
  `NAME`, `NAMESPACE`, `GATEWAY_NAME`, `GATEWAY_NAMESPACE`) is sent the HttpServices of the
  services bound to its Gateway and the policies and request authentications that target it,
  once its pod is known to be an instance of that Gateway running on the credential's node
  (until the pod shows up in the configuration, it is sent none); a stream claiming a waypoint
  whose pod runs on another node, or is not one of that Gateway's pods, is refused with
  PERMISSION_DENIED, also later, when the configuration changes. Any other client subscribing
  to the L7 types is sent none;
- `/debug/xds`: clients, their subscriptions, nonces, ACKed versions and rejected resources with
  the client's reasons;
- istiod's operator views and metrics, under istiod's names and shapes: `syncz` (`/debug/syncz`:
  per connected proxy its id `<pod>.<namespace>`, type, cluster and per type URL the nonce sent,
  the nonce ACKed and the last rejection), `config_dump` (`/debug/config_dump?proxyID=`: what
  a proxy is sent, as Envoy admin `ConfigDump` JSON of `Resource`s), and the `pilot_*` metrics
  of `metrics.py`, with istiod's type names (`wds` for Address, `wads` for Authorization).

grpcio's server is blocking: each stream holds one server worker thread (the response
generator) and runs one reader thread for its requests; both meet in the stream's event queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from ztunnel_py.controlplane.metrics import XdsServerMetrics, push_triggers
from ztunnel_py.controlplane.nodeauth import AuthenticationError, NodeAuthenticator
from ztunnel_py.controlplane.snapshot import MeshSnapshot, SnapshotSource
from ztunnel_py.model import Authorization, Service, Workload
from ztunnel_py.model.authn import WaypointAuthentication
from ztunnel_py.model.http import HttpService
from ztunnel_py.model.policy import WaypointPolicy
from ztunnel_py.protocol.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    WORKLOAD_TYPES,
    ServerStream,
    XdsProtocolError,
)
from ztunnel_py.xds.convert import (
    ConversionError,
    EncodedResource,
    NodeInfo,
    XdsDecodeError,
    decode_request,
    encode_resource,
    encode_response,
)
from ztunnel_py.xds.l7convert import (
    AUTHENTICATION_TYPE,
    HTTP_SERVICE_TYPE,
    L7_TYPES,
    WAYPOINT_POLICY_TYPE,
    encode_l7_resource,
)

log = logging.getLogger("ztunnel_py.controlplane.xds_server")

SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD_NAME = "DeltaAggregatedResources"
DEFAULT_DEBOUNCE = 0.1
DEFAULT_DEBOUNCE_MAX = 0.5
_SHORT_TYPE = {
    ADDRESS_TYPE: "Address",
    AUTHORIZATION_TYPE: "Authorization",
    HTTP_SERVICE_TYPE: "HttpService",
    WAYPOINT_POLICY_TYPE: "HttpAuthorization",
    AUTHENTICATION_TYPE: "HttpAuthentication",
}
# `type` label values of the pilot_* metrics: istiod's for the workload API, our names otherwise
_METRIC_TYPE = {
    ADDRESS_TYPE: "wds",
    AUTHORIZATION_TYPE: "wads",
    HTTP_SERVICE_TYPE: "HttpService",
    WAYPOINT_POLICY_TYPE: "HttpAuthorization",
    AUTHENTICATION_TYPE: "HttpAuthentication",
}
# `types=` of /debug/config_dump: istiod's short names
_DUMP_TYPES = {"wds": ADDRESS_TYPE, "wads": AUTHORIZATION_TYPE}
SERVED_TYPES = (*WORKLOAD_TYPES, *L7_TYPES)
WAYPOINT_PROXY_TYPE = "waypoint"
_NO_RESOURCES: Mapping[str, EncodedResource] = {}
_NO_VERSIONS: Mapping[str, str] = {}


# --- the resource index ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceIndex:
    """One snapshot, encoded: per type, resource name -> encoded resource and version; the L7
    types per waypoint (its Gateway's `namespace/name`)."""

    version: str
    resources: Mapping[str, Mapping[str, EncodedResource]]
    versions: Mapping[str, Mapping[str, str]]
    # resource name -> reason, for snapshot objects that could not be encoded (not served)
    invalid: Mapping[str, str] = field(default_factory=dict)
    # waypoint -> L7 type -> name -> encoded resource
    scoped: Mapping[str, Mapping[str, Mapping[str, EncodedResource]]] = field(default_factory=dict)
    scoped_versions: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    # every pod, "namespace/name" -> its node, and waypoint pods -> their waypoint
    pods: Mapping[str, str] = field(default_factory=dict)
    instances: Mapping[str, str] = field(default_factory=dict)
    # when the first change this index carries happened (time.monotonic; 0: the initial state)
    changed_at: float = 0.0

    def view(
        self, type_url: str, scope: str | None
    ) -> tuple[Mapping[str, str], Mapping[str, EncodedResource]]:
        """(versions, resources) of `type_url` as a client with `scope` sees them: the workload
        types whole, the L7 types of its waypoint (none without one)."""
        if type_url not in L7_TYPES:
            return self.versions.get(type_url, _NO_VERSIONS), self.resources.get(
                type_url, _NO_RESOURCES
            )
        if scope is None:
            return _NO_VERSIONS, _NO_RESOURCES
        versions = self.scoped_versions.get(scope, {}).get(type_url, _NO_VERSIONS)
        return versions, self.scoped.get(scope, {}).get(type_url, _NO_RESOURCES)


_Obj = Workload | Service | Authorization
_L7Obj = HttpService | WaypointPolicy | WaypointAuthentication


class IndexBuilder:
    """Builds a `ResourceIndex` per snapshot, reusing encodings of unchanged objects."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, tuple[_Obj, EncodedResource]]] = {
            t: {} for t in WORKLOAD_TYPES
        }
        # (L7 type, name) -> the variants in use (a policy targeting several waypoints may
        # differ per waypoint in the services it applies to)
        self._l7_cache: dict[tuple[str, str], list[tuple[_L7Obj, EncodedResource]]] = {}

    def build(self, snapshot: MeshSnapshot, changed_at: float = 0.0) -> ResourceIndex:
        addresses: dict[str, _Obj] = {}
        addresses.update(snapshot.workloads)
        addresses.update(snapshot.services)
        inputs: dict[str, Mapping[str, _Obj]] = {
            ADDRESS_TYPE: addresses,
            AUTHORIZATION_TYPE: snapshot.policies,
        }
        resources: dict[str, dict[str, EncodedResource]] = {}
        invalid: dict[str, str] = {}
        for type_url, objects in inputs.items():
            old = self._cache[type_url]
            new: dict[str, tuple[_Obj, EncodedResource]] = {}
            for name, obj in objects.items():
                cached = old.get(name)
                if cached is not None and (cached[0] is obj or cached[0] == obj):
                    new[name] = cached
                    continue
                try:
                    new[name] = (obj, encode_resource(type_url, name, obj))
                except ConversionError as e:
                    invalid[name] = str(e)
                    log.error("not serving %s %s: %s", _SHORT_TYPE[type_url], name, e)
            self._cache[type_url] = new
            resources[type_url] = {name: enc for name, (_, enc) in new.items()}
        scoped = self._scoped(snapshot, invalid)
        pods = {
            f"{w.namespace}/{w.name}": w.node
            for w in snapshot.workloads.values()
            if "//Pod/" in w.uid
        }
        instances = {
            pod: waypoint.name
            for waypoint in snapshot.waypoints.values()
            for pod in waypoint.instances
        }
        return ResourceIndex(
            version=str(snapshot.version),
            resources=resources,
            versions={t: {n: r.version for n, r in rs.items()} for t, rs in resources.items()},
            invalid=invalid,
            scoped=scoped,
            scoped_versions={
                w: {t: {n: r.version for n, r in rs.items()} for t, rs in types.items()}
                for w, types in scoped.items()
            },
            pods=pods,
            instances=instances,
            changed_at=changed_at,
        )

    def _scoped(
        self, snapshot: MeshSnapshot, invalid: dict[str, str]
    ) -> dict[str, dict[str, dict[str, EncodedResource]]]:
        used: dict[tuple[str, str], list[tuple[_L7Obj, EncodedResource]]] = {}
        out: dict[str, dict[str, dict[str, EncodedResource]]] = {}
        for waypoint in snapshot.waypoints.values():
            objects: dict[str, Mapping[str, _L7Obj]] = {
                HTTP_SERVICE_TYPE: {
                    name: snapshot.http_services[name]
                    for name in waypoint.services
                    if name in snapshot.http_services
                },
                WAYPOINT_POLICY_TYPE: waypoint.policies,
                AUTHENTICATION_TYPE: waypoint.authentications,
            }
            out[waypoint.name] = {
                type_url: {
                    name: enc
                    for name, obj in named.items()
                    if (enc := self._encode_l7(type_url, name, obj, used, invalid)) is not None
                }
                for type_url, named in objects.items()
            }
        self._l7_cache = used
        return out

    def _encode_l7(
        self,
        type_url: str,
        name: str,
        obj: _L7Obj,
        used: dict[tuple[str, str], list[tuple[_L7Obj, EncodedResource]]],
        invalid: dict[str, str],
    ) -> EncodedResource | None:
        variants = used.setdefault((type_url, name), [])
        for known, enc in variants + self._l7_cache.get((type_url, name), []):
            if known is obj or known == obj:
                if not any(v is enc for _, v in variants):
                    variants.append((known, enc))
                return enc
        try:
            enc = encode_l7_resource(type_url, name, obj)
        except ConversionError as e:
            invalid[name] = str(e)
            log.error("not serving %s %s: %s", _SHORT_TYPE[type_url], name, e)
            return None
        variants.append((obj, enc))
        return enc


# --- one stream --------------------------------------------------------------------------------


class _Signal:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_PUSH = _Signal("push")
_CLOSED = _Signal("closed")


@dataclass(frozen=True, slots=True)
class WaypointClaim:
    """Who a waypoint's node says it is: its Gateway and its pod (both `namespace/name`)."""

    gateway: str
    pod: str


def waypoint_claim(node: NodeInfo) -> WaypointClaim | None:
    """The claim of a waypoint node (id `waypoint~<ip>~<pod>.<ns>~<ns>.svc.<domain>`, metadata
    NAME, NAMESPACE, GATEWAY_NAME and GATEWAY_NAMESPACE); None for other nodes. Raises
    ValueError for a waypoint node that does not say which Gateway it serves."""
    parts = node.id.split("~")
    if parts[0] != WAYPOINT_PROXY_TYPE and "GATEWAY_NAME" not in node.metadata:
        return None
    pod_part = parts[2] if len(parts) > 2 else ""
    id_pod, _, id_namespace = pod_part.rpartition(".")
    pod = node.metadata.get("NAME") or id_pod
    namespace = node.metadata.get("NAMESPACE") or id_namespace
    gateway = node.metadata.get("GATEWAY_NAME", "")
    if not gateway or not pod or not namespace:
        raise ValueError(
            "a waypoint node needs GATEWAY_NAME, NAME and NAMESPACE metadata (or a node id "
            "waypoint~<ip>~<pod>.<namespace>~...)"
        )
    gateway_namespace = node.metadata.get("GATEWAY_NAMESPACE") or namespace
    return WaypointClaim(f"{gateway_namespace}/{gateway}", f"{namespace}/{pod}")


def authorize_waypoint(
    index: ResourceIndex, claim: WaypointClaim, node: str
) -> tuple[str | None, str | None]:
    """(the waypoint a stream is served as, None while its pod is not known yet; the reason to
    refuse it)."""
    pod_node = index.pods.get(claim.pod)
    if not pod_node:
        return None, None
    if pod_node != node:
        return None, (
            f"waypoint pod {claim.pod} runs on node {pod_node!r}, not on the credential's "
            f"node {node!r}"
        )
    if index.instances.get(claim.pod) != claim.gateway:
        return None, f"pod {claim.pod} is not a pod of waypoint {claim.gateway}"
    return claim.gateway, None


class _Stream:
    def __init__(self, stream_id: int, node: str, peer: str) -> None:
        self.id = stream_id
        self.node = node
        self.peer = peer
        self.connected_at = datetime.now(UTC)
        self.node_info = NodeInfo()
        self.core = ServerStream(SERVED_TYPES, nonce_prefix=f"{stream_id}-")
        self.claim: WaypointClaim | None = None
        # the waypoint whose L7 resources this stream is sent (None: none)
        self.scope: str | None = None
        # guards `core` and `node_info` between the stream's thread and debug readers
        self.lock = threading.Lock()
        self._events: queue.SimpleQueue[bytes | _Signal] = queue.SimpleQueue()
        self._push_queued = threading.Event()

    def read_requests(self, requests: Iterator[bytes]) -> None:
        """Reader thread: every request goes to the event queue, then `_CLOSED`."""
        try:
            for raw in requests:
                self._events.put(raw)
        except Exception as e:  # grpc ends the iterator with an RpcError on cancellation
            log.debug("stream %d: request stream ended: %r", self.id, e)
        finally:
            self._events.put(_CLOSED)

    def notify(self) -> None:
        """A new index is out. At most one push is queued: it reads the latest index."""
        if not self._push_queued.is_set():
            self._push_queued.set()
            self._events.put(_PUSH)

    def close(self) -> None:
        self._events.put(_CLOSED)

    def next_event(self) -> bytes | _Signal:
        event = self._events.get()
        if event is _PUSH:
            self._push_queued.clear()
        return event

    def rejected(self) -> list[dict[str, str | int]]:
        with self.lock:
            return [
                {
                    "client": self.id,
                    "node": self.node,
                    "nodeId": self.node_info.id,
                    "type": type_url,
                    "resource": name,
                    "version": version,
                    "reason": reason,
                }
                for type_url, name, version, reason in self.core.rejected()
            ]

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "node": self.node,
                "nodeId": self.node_info.id,
                "peer": self.peer,
                "connectedAt": self.connected_at.isoformat(timespec="seconds"),
                "waypoint": None
                if self.claim is None
                else {"gateway": self.claim.gateway, "pod": self.claim.pod, "served": self.scope},
                "types": self.core.describe(),
            }


# --- the server --------------------------------------------------------------------------------


class XdsServer:
    def __init__(
        self,
        source: SnapshotSource,
        authenticator: NodeAuthenticator,
        registry: CollectorRegistry | None = None,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        debounce_max: float = DEFAULT_DEBOUNCE_MAX,
    ) -> None:
        self._source = source
        self._authenticator = authenticator
        self._metrics = XdsServerMetrics(registry or CollectorRegistry())
        self._debounce = debounce
        self._debounce_max = debounce_max
        self._builder = IndexBuilder()
        self._last_snapshot = source.current()
        self._index = self._builder.build(self._last_snapshot)
        # orders the trigger diffs of snapshots notified from several threads
        self._triggers_lock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._dirty = False
        self._first_change = 0.0
        self._last_change = 0.0
        self._stopping = False
        self._pushes = 0
        self._unsubscribe = source.subscribe(self._on_snapshot)
        self._pusher = threading.Thread(target=self._push_loop, name="xds-push", daemon=True)
        self._pusher.start()

    @property
    def index(self) -> ResourceIndex:
        return self._index

    def close(self) -> None:
        """Stop following the snapshot source; open streams end with the gRPC server."""
        self._unsubscribe()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._pusher.join()

    # snapshot changes -> debounced index rebuilds

    def _on_snapshot(self, snapshot: MeshSnapshot) -> None:
        now = time.monotonic()
        with self._triggers_lock:
            for reason in push_triggers(self._last_snapshot, snapshot):
                self._metrics.triggers.inc(reason)
            self._last_snapshot = snapshot
        with self._cond:
            if not self._dirty:
                self._dirty = True
                self._first_change = now
            self._last_change = now
            self._cond.notify_all()

    def _push_loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait()
                # Debounce: wait for a quiet period, but never longer than debounce_max.
                while not self._stopping:
                    wake = min(
                        self._last_change + self._debounce, self._first_change + self._debounce_max
                    )
                    delay = wake - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                if self._stopping:
                    return
                self._dirty = False
                first_change = self._first_change
            try:
                index = self._builder.build(self._source.current(), first_change)
            except Exception:
                # A bug in a snapshot must not stop all future pushes; the old index stays.
                log.exception("cannot build the xDS index; keeping the previous one")
                continue
            with self._lock:
                self._index = index
                self._pushes += 1
                streams = list(self._streams.values())
            log.info(
                "pushing snapshot %s to %d clients (%d addresses, %d policies)",
                index.version,
                len(streams),
                len(index.versions[ADDRESS_TYPE]),
                len(index.versions[AUTHORIZATION_TYPE]),
            )
            for stream in streams:
                stream.notify()

    # the RPC

    def DeltaAggregatedResources(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        peer = context.peer()
        try:
            node = self._authenticator.authenticate(metadata).node
        except AuthenticationError as e:
            log.warning("refused xDS stream from %s: UNAUTHENTICATED: %s", peer, e)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        stream = _Stream(next(self._ids), node, peer)
        if not context.add_callback(stream.close):
            return  # the RPC ended already
        with self._lock:
            self._streams[stream.id] = stream
            self._metrics.connected.set(len(self._streams))
        log.info("xDS stream %d from node %s (%s) opened", stream.id, node, peer)
        reader = threading.Thread(
            target=stream.read_requests,
            args=(requests,),
            name=f"xds-read-{stream.id}",
            daemon=True,
        )
        reader.start()
        try:
            yield from self._serve(stream, context)
        finally:
            with self._lock:
                self._streams.pop(stream.id, None)
                self._metrics.connected.set(len(self._streams))
            log.info("xDS stream %d from node %s closed", stream.id, node)

    def _serve(self, stream: _Stream, context: grpc.ServicerContext) -> Iterator[bytes]:
        while True:
            event = stream.next_event()
            if event is _CLOSED:
                return
            index = self._index
            started = time.monotonic()
            if event is _PUSH:
                self._authorize(stream, index, context)
                with stream.lock:
                    deltas = []
                    for t in stream.core.subscribed_types:
                        versions, resources = index.view(t, stream.scope)
                        delta = stream.core.push(t, versions, index.version)
                        if delta is not None:
                            deltas.append((delta, resources))
                for delta, resources in deltas:
                    yield encode_response(delta, resources)
                    self._sent(delta.type_url, started)
                if deltas and index.changed_at:
                    # istiod's convergence: from the change to this proxy having all of it
                    self._metrics.convergence.observe(time.monotonic() - index.changed_at)
                continue
            assert isinstance(event, bytes)
            try:
                request, node_info = decode_request(event)
            except XdsDecodeError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if node_info is not None:
                self._check_node(stream, node_info, context)
                self._authorize(stream, index, context)
            try:
                with stream.lock:
                    versions, resources = index.view(request.type_url, stream.scope)
                    delta = stream.core.receive(request, versions, index.version)
                    nack = stream.core.last_nack(request.type_url) if request.is_nack else None
            except XdsProtocolError as e:
                log.warning("xDS stream %d from node %s: %s", stream.id, stream.node, e)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            if nack is not None and nack.nonce == request.response_nonce:
                self._metrics.rejects.inc(_METRIC_TYPE[request.type_url])
                log.warning(
                    "node %s (%s) rejected %s version %s: %s",
                    stream.node,
                    stream.node_info.id,
                    _SHORT_TYPE[request.type_url],
                    nack.system_version,
                    nack.message,
                )
            if delta is not None:
                yield encode_response(delta, resources)
                self._sent(delta.type_url, started)

    def _sent(self, type_url: str, started: float) -> None:
        """A response went out (the generator resumes once gRPC took it)."""
        metric_type = _METRIC_TYPE[type_url]
        self._metrics.pushes.inc(metric_type)
        self._metrics.push_time.labels(metric_type).observe(time.monotonic() - started)

    def _check_node(
        self, stream: _Stream, node_info: NodeInfo, context: grpc.ServicerContext
    ) -> None:
        claimed = node_info.metadata.get("NODE_NAME", "")
        if claimed and claimed != stream.node:
            message = (
                f"node metadata NODE_NAME={claimed!r} does not match the credential's node "
                f"{stream.node!r}"
            )
            log.warning("refused xDS stream %d: %s", stream.id, message)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        try:
            claim = waypoint_claim(node_info)
        except ValueError as e:
            log.warning("refused xDS stream %d: %s", stream.id, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with stream.lock:
            stream.node_info = node_info
            if claim is not None and stream.claim is None:
                log.info(
                    "xDS stream %d is waypoint %s (pod %s)", stream.id, claim.gateway, claim.pod
                )
            if claim is not None:
                stream.claim = claim

    def _authorize(
        self, stream: _Stream, index: ResourceIndex, context: grpc.ServicerContext
    ) -> None:
        """Decide which waypoint's L7 resources a waypoint stream gets with `index`."""
        claim = stream.claim
        if claim is None:
            return
        scope, denial = authorize_waypoint(index, claim, stream.node)
        if denial is not None:
            log.warning(
                "refused xDS stream %d as waypoint %s: %s", stream.id, claim.gateway, denial
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, denial)
        if scope != stream.scope:
            if scope is None:
                log.info(
                    "xDS stream %d: pod %s is not known yet; serving waypoint %s nothing until "
                    "it is",
                    stream.id,
                    claim.pod,
                    claim.gateway,
                )
            else:
                log.info("xDS stream %d serves waypoint %s", stream.id, scope)
            with stream.lock:
                stream.scope = scope

    # debug

    def debug(self) -> dict[str, Any]:
        """The `/debug/xds` view."""
        index = self._index
        with self._lock:
            streams = list(self._streams.values())
            pushes = self._pushes
        return {
            "version": index.version,
            "pushes": pushes,
            "resources": {t: len(v) for t, v in index.versions.items()},
            "waypoints": {
                waypoint: {_SHORT_TYPE[t]: len(v) for t, v in types.items()}
                for waypoint, types in index.scoped_versions.items()
            },
            "invalid": dict(index.invalid),
            "clients": [s.describe() for s in streams],
            "rejected": [r for s in streams for r in s.rejected()],
        }

    def syncz(self, query: Mapping[str, str]) -> tuple[int, Any]:
        """istiod's `/debug/syncz[?namespace=]`: the sync status of every connected proxy."""
        with self._lock:
            streams = sorted(self._streams.values(), key=lambda s: s.id)
        namespace = query.get("namespace", "")
        out = []
        for stream in streams:
            described = stream.describe()
            if not described["nodeId"]:
                continue  # no request with a node yet: istiod does not know the proxy either
            if namespace and proxy_id(described["nodeId"]).rpartition(".")[2] != namespace:
                continue
            with stream.lock:
                metadata = dict(stream.node_info.metadata)
            out.append(_sync_status(described, metadata))
        return 200, out

    def config_dump(self, query: Mapping[str, str]) -> tuple[int, Any]:
        """istiod's `/debug/config_dump?proxyID=<pod>.<namespace>[&types=wds,wads]`: the
        resources that proxy is sent, as an Envoy admin ConfigDump of `Resource`s (the Address
        type unless `types` says otherwise)."""
        wanted = query.get("proxyID", "")
        if not wanted:
            return 400, "You must provide a proxyID in the query string\n"
        with self._lock:
            streams = sorted(self._streams.values(), key=lambda s: s.id)
        stream = next(
            (
                s
                for s in streams
                if s.node_info.id and wanted in f"{proxy_id(s.node_info.id)}-{s.id}"
            ),
            None,
        )
        if stream is None:
            return 404, (
                "Proxy not connected to this Pilot instance. It may be connected to another "
                "instance.\n"
            )
        names = [t.strip().lower() for t in query.get("types", "wds").split(",") if t.strip()]
        unknown = [t for t in names if t not in _DUMP_TYPES]
        if unknown:
            return 400, f"unknown types {unknown}: expected {', '.join(_DUMP_TYPES)}\n"
        index = self._index
        configs = []
        for name in names:
            _, resources = index.view(_DUMP_TYPES[name], stream.scope)
            for key in sorted(resources):
                configs.append(
                    {
                        "@type": "type.googleapis.com/envoy.service.discovery.v3.Resource",
                        **json_format.MessageToDict(resources[key].resource),
                    }
                )
        return 200, {"configs": configs}


def proxy_id(node_id: str) -> str:
    """istiod's id of a proxy, `<pod>.<namespace>`: the third field of its node id."""
    parts = node_id.split("~")
    return parts[2] if len(parts) > 2 else node_id


def proxy_type(node_id: str) -> str:
    return node_id.split("~", 1)[0] if "~" in node_id else ""


def _sync_status(stream: dict[str, Any], metadata: Mapping[str, str]) -> dict[str, Any]:
    """One entry of istiod's `/debug/syncz` (its `SyncStatus`, empty fields left out)."""
    resources = {}
    for type_url, t in stream["types"].items():
        nack = t["lastNack"]
        status = {"sent": t["lastNonce"], "acked": t["ackedNonce"]}
        if nack is not None:
            status["lastError"] = nack["message"]
        resources[type_url] = {k: v for k, v in status.items() if v}
    out = {
        "cluster_id": metadata.get("CLUSTER_ID", ""),
        "proxy": proxy_id(stream["nodeId"]),
        "proxy_type": proxy_type(stream["nodeId"]),
        "istio_version": metadata.get("ISTIO_VERSION", ""),
        "resources": resources,
    }
    return {k: v for k, v in out.items() if v}


def add_to_server(server: XdsServer, grpc_server: grpc.Server) -> None:
    # Raw bytes in and out: the servicer decodes requests itself and sends responses it built
    # from pre-encoded resources.
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {METHOD_NAME: grpc.stream_stream_rpc_method_handler(server.DeltaAggregatedResources)},
    )
    grpc_server.add_generic_rpc_handlers((handler,))
