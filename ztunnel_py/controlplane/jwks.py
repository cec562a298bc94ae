"""The JWKS resolver: the control plane fetches the keys of `jwksUri` (or of the issuer's OpenID
discovery document) and sends them to waypoints inline, as istiod does by default
(`PILOT_JWT_ENABLE_REMOTE_JWKS` off; its `JwksResolver`).

- **First use** (translation asks for an (issuer, jwksUri) it has not seen): one fetch, right
  away, bounded by the rule's `timeout` (5 s by default); istiod blocks its push the same way.
  The result, keys or failure, is cached, so a translation never waits on the same key set twice.
- **Refresh** (a background thread): every `refresh_interval` (istiod's 20 minutes) for good
  keys; a failed key set is retried after 1 s, then twice as long each time up to 60 s. New
  keys (a rotation, or the first success after a failure) call `on_change`, which re-translates
  the configuration, so waypoints get them with the next push. A failed refresh keeps the last
  good keys; a key set unused (or not refreshed successfully) for 7 days is dropped.
- **Failure** (unreachable, not 2xx, larger than 1 MiB, not a JSON Web Key Set): the rule goes
  out with the reason instead of keys, and waypoints reject every token of that issuer with 401
  (`Jwks remote fetch is failed`): it fails closed. istiod sends a fake key set to the same
  effect. The reason is also a translation warning on the RequestAuthentication.
- **Where the host is** (istiod uses cluster DNS and kube-proxy; this control plane has neither):
  a Service's hostname (`jwks.auth.svc.cluster.local`) resolves to the ready endpoints of that
  Service's port, dialled on their target port, in the order given; any other name through the
  system resolver. `https` is verified against the system's roots, with the URL's host as the
  name; redirects are not followed.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from ztunnel_py.controlplane.validation.istio_security import jwks_problem

log = logging.getLogger("ztunnel_py.controlplane.jwks")

__all__ = [
    "DEFAULT_TIMEOUT",
    "HostAddresses",
    "JwksResolver",
    "JwksResult",
    "fetch_document",
]

OPENID_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
DEFAULT_TIMEOUT = 5.0
REFRESH_INTERVAL = 20 * 60.0
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
EVICTION = 7 * 24 * 3600.0
MAX_DOCUMENT = 1 << 20

# (host, port) -> the addresses to dial for it, in order (empty: ask the system resolver)
HostAddresses = Callable[[str, int], Sequence[tuple[str, int]]]


def _no_mesh_hosts(host: str, port: int) -> Sequence[tuple[str, int]]:
    return ()


@dataclass(frozen=True, slots=True)
class JwksResult:
    """A key set as text, or why there is none."""

    keys: str = ""
    error: str = ""


class FetchError(Exception):
    pass


def fetch_document(url: str, timeout: float, hosts: HostAddresses = _no_mesh_hosts) -> bytes:
    """GET `url` (http or https) within `timeout` seconds in all (name lookups through the
    system resolver excepted: its own timeouts apply); FetchError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise FetchError(f"{url!r}: {e}") from None
    host = parts.hostname
    candidates = list(hosts(host, port)) or [(host, port)]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    for address, dial_port in candidates:
        left = deadline - time.monotonic()
        if left <= 0:
            problems.append(f"no time left for {address}:{dial_port} ({timeout:g}s in all)")
            break
        try:
            return _get(parts.scheme, host, address, dial_port, parts.netloc, target, left)
        except (OSError, http.client.HTTPException, FetchError) as e:
            problems.append(f"{address}:{dial_port}: {e}")
    raise FetchError(f"GET {url}: " + "; ".join(problems))


def _get(
    scheme: str, host: str, address: str, port: int, netloc: str, target: str, timeout: float
) -> bytes:
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(netloc, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", target, headers={"Host": netloc, "Accept": "application/json"})
        response = conn.getresponse()
        body = response.read(MAX_DOCUMENT + 1)
        if not 200 <= response.status < 300:
            raise FetchError(f"status {response.status}: {body[:100]!r}")
        if len(body) > MAX_DOCUMENT:
            raise FetchError(f"the document is larger than {MAX_DOCUMENT} bytes")
        return body
    finally:
        sock.close()


@dataclass(slots=True)
class _Entry:
    issuer: str
    uri: str
    timeout: float
    hosts: HostAddresses
    result: JwksResult
    last_used: float
    # the last successful fetch (0: never)
    refreshed: float = 0.0
    next_refresh: float = 0.0
    retry: float = RETRY_FIRST


@dataclass
class JwksResolver:
    """Key sets by (issuer, jwksUri), fetched on first use and kept fresh by `run`."""

    refresh_interval: float = REFRESH_INTERVAL
    eviction: float = EVICTION
    clock: Callable[[], float] = time.monotonic
    # called (from the refresh thread) when a key set changed
    on_change: Callable[[], object] = field(default=lambda: None)
    _entries: dict[tuple[str, str], _Entry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._wake = threading.Condition(self._lock)

    def resolve(
        self,
        issuer: str,
        uri: str,
        timeout: float = DEFAULT_TIMEOUT,
        hosts: HostAddresses = _no_mesh_hosts,
    ) -> JwksResult:
        """The keys for `issuer` at `uri` (empty: by OpenID discovery of the issuer)."""
        key = (issuer, uri)
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.last_used = now
                entry.hosts = hosts
                entry.timeout = timeout
                return entry.result
        result = self._fetch(issuer, uri, timeout, hosts)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(issuer, uri, timeout, hosts, result, now)
                self._schedule(entry, now)
                self._wake.notify_all()
            return entry.result

    def _schedule(self, entry: _Entry, now: float) -> None:
        """After a fetch: refresh good keys at the interval, retry failures with backoff."""
        if entry.result.error:
            entry.next_refresh = now + entry.retry
            entry.retry = min(entry.retry * 2, RETRY_MAX)
        else:
            entry.refreshed = now
            entry.next_refresh = now + self.refresh_interval
            entry.retry = RETRY_FIRST

    def _fetch(self, issuer: str, uri: str, timeout: float, hosts: HostAddresses) -> JwksResult:
        where = uri or f"{issuer}{OPENID_DISCOVERY_SUFFIX}"
        try:
            if not uri:
                uri = _discover(issuer, timeout, hosts)
            text = fetch_document(uri, timeout, hosts).decode("utf-8", errors="replace")
        except FetchError as e:
            return JwksResult(error=f"cannot fetch the keys of issuer {issuer}: {e}")
        problem = jwks_problem(text)
        if problem is not None:
            return JwksResult(error=f"the keys of issuer {issuer} from {where}: {problem}")
        return JwksResult(keys=text)

    def refresh_due(self) -> bool:
        """Refresh the key sets that are due; True if any changed. Drops unused ones."""
        now = self.clock()
        with self._lock:
            for key, entry in list(self._entries.items()):
                stale = entry.refreshed and now - entry.refreshed >= self.eviction
                if now - entry.last_used >= self.eviction or stale:
                    log.info("dropping the cached keys of issuer %s (%s)", *key)
                    del self._entries[key]
            due = [replace(e) for e in self._entries.values() if e.next_refresh <= now]
        changed = False
        for snapshot in due:
            result = self._fetch(snapshot.issuer, snapshot.uri, snapshot.timeout, snapshot.hosts)
            with self._lock:
                current = self._entries.get((snapshot.issuer, snapshot.uri))
                if current is None:
                    continue
                entry = current
                before = entry.result
                if result.error and before.keys:
                    log.warning("%s; keeping the last good keys", result.error)
                    entry.next_refresh = now + entry.retry
                    entry.retry = min(entry.retry * 2, RETRY_MAX)
                    continue
                if result.error:
                    log.warning("%s; retrying in %.0fs", result.error, entry.retry)
                entry.result = result
                self._schedule(entry, now)
                if result != before:
                    changed = True
                    if not result.error:
                        log.info("fetched new keys of issuer %s", entry.issuer)
        return changed

    def run(self, stop: threading.Event) -> None:
        """The refresh loop, until `stop` is set (call `stop_waiting` after setting it)."""
        while not stop.is_set():
            if self.refresh_due():
                try:
                    self.on_change()
                except Exception:
                    log.exception("applying new JWT keys failed")
            with self._lock:
                due = min((e.next_refresh for e in self._entries.values()), default=None)
                wait = 3600.0 if due is None else max(0.0, due - self.clock())
                if not stop.is_set():
                    self._wake.wait(min(wait, 3600.0))

    def stop_waiting(self) -> None:
        with self._lock:
            self._wake.notify_all()

    def describe(self) -> list[dict[str, str]]:
        """For `/debug/config`: each key set and its state."""
        with self._lock:
            return [
                {
                    "issuer": e.issuer,
                    "jwksUri": e.uri or "(OpenID discovery)",
                    "state": "keys" if e.result.keys else e.result.error,
                }
                for e in self._entries.values()
            ]


def _discover(issuer: str, timeout: float, hosts: HostAddresses) -> str:
    """The `jwks_uri` of the issuer's OpenID discovery document."""
    body = fetch_document(issuer.rstrip("/") + OPENID_DISCOVERY_SUFFIX, timeout, hosts)
    try:
        document = json.loads(body)
    except ValueError as e:
        raise FetchError(f"the OpenID discovery document of {issuer} is not JSON: {e}") from None
    uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri:
        raise FetchError(f"no jwks_uri in the OpenID discovery document of {issuer}")
    return uri
