"""Who is calling the CA and the xDS server: authentication from gRPC metadata.

A `NodeAuthenticator` turns request metadata into the `Caller` (its node, and for a workload's
own credential the one identity it may ask for) or raises `AuthenticationError`. The
implementation here is node tokens: opaque random strings issued by
`ztunnel-py controlplane node-token NODE`, presented as `authorization: Bearer <token>`. Only a
SHA-256 of each token is stored (in `<data dir>/node-tokens.json`), with its node and expiry.
In a cluster, Kubernetes service-account tokens are checked with the TokenReview API
(`kubeauth.py`).

The store is shared between the running server and the `node-token` command (separate
processes): writers take an exclusive `flock` and replace the file atomically; the server re-reads
it whenever its modification stamp changes, so a freshly issued token works at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from ztunnel_py.model.identity import Identity

TOKEN_FILE = "node-tokens.json"
TOKEN_PREFIX = "ztpy-node-"
_NODE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


class AuthenticationError(Exception):
    """The caller could not be authenticated; the message says why (never echoes the token)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the node it runs on, and what it may ask the CA for."""

    node: str
    # None: a node credential, which may ask for any identity scheduled on `node`; else the
    # only identity this caller may ask for (a workload presenting its own credential)
    identity: Identity | None = None


class NodeAuthenticator(Protocol):
    def authenticate(self, metadata: Mapping[str, str]) -> Caller:
        """Return the caller, or raise `AuthenticationError`."""
        ...


def validate_node_name(node: str) -> str:
    if not _NODE_NAME.match(node):
        raise ValueError(
            f"node name {node!r} must be 1-253 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return node


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The token from `authorization: Bearer <token>`; raises `AuthenticationError`."""
    header = metadata.get("authorization")
    if header is None:
        raise AuthenticationError("no 'authorization' metadata (expected 'Bearer <token>')")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("'authorization' metadata is not of the form 'Bearer <token>'")
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class NodeToken:
    node: str
    expires: datetime


class NodeTokenStore:
    """Node tokens persisted as {sha256(token): node, expiry} in one JSON file."""

    def __init__(self, path: Path, clock: Callable[[], datetime] | None = None) -> None:
        self._path = path
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[str, NodeToken] = {}

    @property
    def path(self) -> Path:
        return self._path

    def issue(self, node: str, ttl: timedelta) -> str:
        """Create a token for `node` valid for `ttl`; returns the token (stored only hashed)."""
        validate_node_name(node)
        if ttl <= timedelta(0):
            raise ValueError(f"token lifetime must be positive, got {ttl}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._path.with_name(self._path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tokens = {d: t for d, t in _read(self._path).items() if t.expires > now}
            tokens[_digest(token)] = NodeToken(node, now + ttl)
            _write(self._path, tokens)
        return token

    def lookup(self, token: str) -> str:
        """The node a token belongs to; raises `AuthenticationError` if unknown or expired."""
        digest = _digest(token)
        with self._lock:
            self._refresh()
            # A plain dict lookup is safe: the key is a hash of 256 random bits, so its timing
            # reveals nothing that helps guess a token.
            entry = self._tokens.get(digest)
        if entry is None:
            raise AuthenticationError("unknown node token")
        if entry.expires <= self._clock():
            raise AuthenticationError(
                f"node token for {entry.node} expired at {entry.expires:%Y-%m-%dT%H:%M:%SZ}"
            )
        return entry.node

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._tokens = None, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._tokens = _read(self._path)
            self._stamp = stamp


def _read(path: Path) -> dict[str, NodeToken]:
    try:
        raw: Any = json.loads(path.read_text())
        return {
            str(digest): NodeToken(str(entry["node"]), datetime.fromisoformat(entry["expires"]))
            for digest, entry in raw["tokens"].items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AuthenticationError(f"node token store {path} is unreadable: {e!r}") from None


def _write(path: Path, tokens: Mapping[str, NodeToken]) -> None:
    data = {
        "tokens": {d: {"node": t.node, "expires": t.expires.isoformat()} for d, t in tokens.items()}
    }
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)


class TokenAuthenticator:
    """Authenticates `authorization: Bearer <node token>` against a `NodeTokenStore`."""

    def __init__(self, store: NodeTokenStore) -> None:
        self._store = store

    def authenticate(self, metadata: Mapping[str, str]) -> Caller:
        return Caller(self._store.lookup(bearer_token(metadata)))
