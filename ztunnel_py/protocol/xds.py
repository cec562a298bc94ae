"""Delta xDS bookkeeping, both ends of a stream, without I/O or protobuf (docs/istio-compat.md,
"Stream flow").

A Delta ADS stream carries, per type URL, subscriptions and ACK/NACKs from the client and
resource deltas from the server. This module keeps the state that decides what goes on the wire
and leaves encoding to the caller:

- `ServerStream`: one client's subscriptions per type (wildcard or named), the version of each
  resource the client has (seeded from `initial_resource_versions` on (re)connect, so unchanged
  resources are not resent), nonces in flight, the last ACK and the last NACK with its
  per-resource reasons. Given the server's current `name -> version` view it answers with a
  `Delta`: the names to (re)send and the names to remove.
- `ClientStream`: what the client has per type (kept across reconnects), the initial requests
  of a new stream, and the ACK or NACK for each response. A NACK's text is the per-resource
  reasons joined with `"; "` as ztunnel joins them; `parse_nack` splits it back.

Resource payloads never pass through here: deltas name resources, the caller looks them up.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
WORKLOAD_TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)
WILDCARD = "*"
NACK_SEPARATOR = "; "
# Nonces remembered per type while their ACK is outstanding; older ones are forgotten (a client
# that never ACKs must not grow the server's memory).
MAX_PENDING_NONCES = 16


class XdsProtocolError(Exception):
    """The peer broke the protocol; the message says how (the stream should be closed)."""


@dataclass(frozen=True, slots=True)
class Request:
    """The bookkeeping content of a DeltaDiscoveryRequest."""

    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=dict)
    response_nonce: str = ""
    # error_detail.message when error_detail is set (a NACK), else None
    error: str | None = None

    @property
    def is_nack(self) -> bool:
        return self.error is not None


@dataclass(frozen=True, slots=True)
class Delta:
    """What one DeltaDiscoveryResponse must carry: resources to send, names to remove."""

    type_url: str
    nonce: str
    system_version: str
    upserts: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    nonce: str
    system_version: str
    message: str
    # resource name -> reason, for the parts of the message that name a resource sent with
    # that nonce; anything else is under "".
    reasons: Mapping[str, str]


def nack_message(reasons: Mapping[str, str]) -> str:
    """The NACK text for per-resource rejection reasons: `name: reason; name: reason`."""
    return NACK_SEPARATOR.join(f"{name}: {reason}" for name, reason in reasons.items())


def parse_nack(message: str, names: Iterable[str]) -> dict[str, str]:
    """Split a NACK text into reasons per resource (those in `names`); the rest goes under ""."""
    known = set(names)
    reasons: dict[str, str] = {}
    other: list[str] = []
    for part in message.split(NACK_SEPARATOR):
        name, sep, reason = part.partition(": ")
        if sep and name in known:
            reasons[name] = reason
        elif part:
            other.append(part)
    if other:
        reasons[""] = NACK_SEPARATOR.join(other)
    return reasons


# --- server side -------------------------------------------------------------------------------


@dataclass
class _ServerType:
    wildcard: bool
    names: set[str]
    # name -> version the client has or has been sent
    sent: dict[str, str]
    # nonce -> (system version, name -> version sent with it), oldest first
    pending: OrderedDict[str, tuple[str, dict[str, str]]] = field(default_factory=OrderedDict)
    # name -> (version, reason): resources the client rejected and has not accepted since
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)
    last_nonce: str = ""
    acked_nonce: str = ""
    acked_version: str = ""
    acks: int = 0
    nacks: int = 0
    last_nack: Nack | None = None

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


class ServerStream:
    """One client's Delta ADS stream as the server sees it.

    `versions` arguments are the server's current view of one type: resource name -> version.
    """

    def __init__(self, served_types: Iterable[str], nonce_prefix: str = "") -> None:
        self._served = frozenset(served_types)
        self._types: dict[str, _ServerType] = {}
        self._nonces = itertools.count(1)
        self._nonce_prefix = nonce_prefix

    @property
    def subscribed_types(self) -> list[str]:
        return list(self._types)

    def receive(
        self, request: Request, versions: Mapping[str, str], system_version: str
    ) -> Delta | None:
        """Process a request; returns the response it calls for, if any.

        Raises `XdsProtocolError` for a type this server does not serve.
        """
        if request.type_url not in self._served:
            raise XdsProtocolError(
                f"type {request.type_url!r} is not served here "
                f"(served: {', '.join(sorted(self._served))})"
            )
        state = self._types.get(request.type_url)
        if state is None:
            return self._first_request(request, versions, system_version)
        if request.response_nonce:
            self._acknowledge(state, request)
        added = self._resubscribe(state, request)
        if not added:
            return None
        # Newly subscribed names the client does not have yet: send them, or tell the client
        # they do not exist (a removal), as delta xDS asks for unknown names.
        upserts = [n for n in added if n in versions and state.sent.get(n) != versions[n]]
        missing = [n for n in added if n not in versions]
        return self._delta(request.type_url, state, upserts, missing, versions, system_version)

    def push(self, type_url: str, versions: Mapping[str, str], system_version: str) -> Delta | None:
        """The delta that brings the client's view of `type_url` to `versions`; None if the
        client is not subscribed to the type or already has exactly that."""
        state = self._types.get(type_url)
        if state is None:
            return None
        upserts = [n for n, v in versions.items() if state.sent.get(n) != v and state.wants(n)]
        removed = [n for n in state.sent if n not in versions]
        if not upserts and not removed:
            return None
        return self._delta(type_url, state, upserts, removed, versions, system_version)

    def describe(self) -> dict[str, dict[str, object]]:
        """Per type: subscription, nonces, ACK and NACK state (for the debug endpoint)."""
        out: dict[str, dict[str, object]] = {}
        for type_url, s in self._types.items():
            nack = s.last_nack
            out[type_url] = {
                "wildcard": s.wildcard,
                "subscribed": sorted(s.names),
                "resources": len(s.sent),
                "lastNonce": s.last_nonce,
                "ackedNonce": s.acked_nonce,
                "ackedVersion": s.acked_version,
                "acks": s.acks,
                "nacks": s.nacks,
                "pendingNonces": list(s.pending),
                "rejected": {
                    name: {"version": version, "reason": reason}
                    for name, (version, reason) in sorted(s.rejected.items())
                },
                "lastNack": None
                if nack is None
                else {
                    "nonce": nack.nonce,
                    "version": nack.system_version,
                    "message": nack.message,
                    "reasons": dict(nack.reasons),
                },
            }
        return out

    def rejected(self) -> list[tuple[str, str, str, str]]:
        """(type URL, resource name, version, reason) of every resource the client rejected
        and has not accepted since."""
        return [
            (type_url, name, version, reason)
            for type_url, s in self._types.items()
            for name, (version, reason) in sorted(s.rejected.items())
        ]

    def last_nack(self, type_url: str) -> Nack | None:
        state = self._types.get(type_url)
        return None if state is None else state.last_nack

    def _first_request(
        self, request: Request, versions: Mapping[str, str], system_version: str
    ) -> Delta:
        subscribe = set(request.subscribe)
        unsubscribe = set(request.unsubscribe)
        # An empty first subscription is wildcard; "*" in both lists means "nothing yet"
        # (ztunnel's on-demand mode).
        wildcard = (not subscribe or WILDCARD in subscribe) and WILDCARD not in unsubscribe
        names = subscribe - {WILDCARD}
        state = _ServerType(wildcard, names, dict(request.initial_versions))
        self._types[request.type_url] = state
        # The client's claimed resources it is no longer subscribed to are forgotten silently.
        for name in [n for n in state.sent if not state.wants(n)]:
            del state.sent[name]
        upserts = [n for n, v in versions.items() if state.wants(n) and state.sent.get(n) != v]
        removed = [n for n in state.sent if n not in versions]
        removed += [n for n in sorted(names) if n not in versions and n not in state.sent]
        # Always answered, even when empty: the client's readiness waits for this response.
        return self._delta(request.type_url, state, upserts, removed, versions, system_version)

    def _acknowledge(self, state: _ServerType, request: Request) -> None:
        sent = state.pending.get(request.response_nonce)
        if sent is None:
            # An ACK of a nonce we never sent or have forgotten: nothing to record.
            return
        # Everything up to this nonce is answered.
        while state.pending:
            nonce, _ = state.pending.popitem(last=False)
            if nonce == request.response_nonce:
                break
        version, sent_versions = sent
        reasons = {} if request.error is None else parse_nack(request.error, sent_versions)
        for name, resource_version in sent_versions.items():
            reason = reasons.get(name)
            if reason is None:
                state.rejected.pop(name, None)
            else:
                state.rejected[name] = (resource_version, reason)
        if request.error is None:
            state.acks += 1
            state.acked_nonce = request.response_nonce
            state.acked_version = version
            return
        state.nacks += 1
        state.last_nack = Nack(request.response_nonce, version, request.error, reasons)

    def _resubscribe(self, state: _ServerType, request: Request) -> list[str]:
        added: list[str] = []
        for name in request.unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
        if request.unsubscribe:
            for name in [n for n in state.sent if not state.wants(n)]:
                del state.sent[name]
                state.rejected.pop(name, None)
        for name in request.subscribe:
            if name == WILDCARD:
                state.wildcard = True
            elif name not in state.names:
                state.names.add(name)
                added.append(name)
        return added

    def _delta(
        self,
        type_url: str,
        state: _ServerType,
        upserts: Iterable[str],
        removed: Iterable[str],
        versions: Mapping[str, str],
        system_version: str,
    ) -> Delta:
        up = tuple(upserts)
        gone = tuple(dict.fromkeys(removed))
        for name in up:
            state.sent[name] = versions[name]
        for name in gone:
            state.sent.pop(name, None)
            state.rejected.pop(name, None)
        nonce = f"{self._nonce_prefix}{next(self._nonces)}"
        state.last_nonce = nonce
        state.pending[nonce] = (system_version, {name: versions[name] for name in up})
        while len(state.pending) > MAX_PENDING_NONCES:
            state.pending.popitem(last=False)
        return Delta(type_url, nonce, system_version, up, gone)


# --- client side -------------------------------------------------------------------------------


class ClientStream:
    """The client's side: resource versions it holds per type, kept across reconnects."""

    def __init__(self, types: Iterable[str] = WORKLOAD_TYPES) -> None:
        self.types = tuple(types)
        self._known: dict[str, dict[str, str]] = {t: {} for t in self.types}
        self._acked: set[str] = set()

    def initial_requests(self) -> list[Request]:
        """One wildcard request per type, with every version already held."""
        return [Request(t, initial_versions=dict(self._known[t])) for t in self.types]

    def known(self, type_url: str) -> dict[str, str]:
        return dict(self._known.get(type_url, {}))

    def response(
        self,
        type_url: str,
        nonce: str,
        accepted: Mapping[str, str],
        removed: Iterable[str],
        rejected: Mapping[str, str],
    ) -> Request:
        """Record a processed response (accepted name -> version, removed names, rejected name
        -> reason) and return its ACK, or its NACK if anything was rejected.

        A rejected resource keeps whatever version the client had before, so a reconnect asks
        for it again. Raises `XdsProtocolError` for a type never subscribed to.
        """
        known = self._known.get(type_url)
        if known is None:
            raise XdsProtocolError(f"response for type {type_url!r}, which was not subscribed")
        for name in removed:
            known.pop(name, None)
        known.update(accepted)
        if rejected:
            return Request(type_url, response_nonce=nonce, error=nack_message(rejected))
        self._acked.add(type_url)
        return Request(type_url, response_nonce=nonce)

    def acked(self, type_url: str) -> bool:
        """Whether a response of this type was ever ACKed (readiness waits for each type)."""
        return type_url in self._acked
