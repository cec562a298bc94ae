"""Kubernetes service-account tokens as credentials for the CA and xDS, checked as istiod does.

In a cluster the agent presents its projected service-account token
(`/var/run/secrets/tokens/istio-token`, audience `istio-ca`) as `authorization: Bearer`. The
control plane asks the API server about it with a TokenReview (audiences `[istio-ca]`) and
then decides:

- the token must be authenticated for our audience (the status echoes the audiences it is
  valid for) and name a service account (`system:serviceaccount:<ns>:<sa>`);
- it must be bound to a pod (`authentication.kubernetes.io/pod-name` in the user's extra, as
  for every projected token), whose node is the caller's node: the API server's own
  `authentication.kubernetes.io/node-name` (Kubernetes 1.30 and later) when present, else the
  pod's `spec.nodeName` in the configuration we watch, whose uid must match the token's;
- a trusted node account (`--trusted-node-accounts`, istiod's CA_TRUSTED_NODE_ACCOUNTS, default
  `istio-system/ztunnel`) is a node credential: it may ask for the identities of workloads
  scheduled on its node (node-scoped impersonation); any other account may ask only for its
  own identity `spiffe://<trust domain>/ns/<ns>/sa/<sa>` (a waypoint with its own token).

Answers are cached for `CACHE_SECONDS` per token (as a SHA-256), so a node asking for many
certificates costs one review a minute; refusals are not cached. Node tokens from
`controlplane node-token` keep working beside Kubernetes tokens (they carry their own prefix).

Verification: tested against a stand-in API server that answers with recorded TokenReview
responses; not run against a real API server (see the README, "Install on Kubernetes").
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ztunnel_py.controlplane.kubeca import api_call
from ztunnel_py.controlplane.nodeauth import (
    TOKEN_PREFIX,
    AuthenticationError,
    Caller,
    TokenAuthenticator,
    bearer_token,
)
from ztunnel_py.controlplane.resources import ResourceKey
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.model.identity import Identity

log = logging.getLogger("ztunnel_py.controlplane.kubeauth")

CA_AUDIENCE = "istio-ca"
DEFAULT_TRUSTED_NODE_ACCOUNTS = ("istio-system/ztunnel",)
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 4096
SERVICE_ACCOUNT_USER = "system:serviceaccount:"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"

# (namespace, pod name) -> (node name, pod uid), from the watched configuration
PodLookup = Callable[[str, str], tuple[str, str] | None]
# the token -> the API server's TokenReview answer (its JSON), for audiences
Reviewer = Callable[[str, tuple[str, ...]], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ReviewedAccount:
    """What a TokenReview established about a token."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str
    node: str  # "" when the API server did not say


def reviewed_account(review: Mapping[str, Any], audience: str) -> ReviewedAccount:
    """The service account and pod a TokenReview answer vouches for; AuthenticationError if it
    vouches for nothing we accept."""
    status = review.get("status")
    if not isinstance(status, Mapping):
        raise AuthenticationError("the TokenReview answer has no status")
    if not status.get("authenticated"):
        reason = status.get("error") or "not authenticated"
        raise AuthenticationError(f"the Kubernetes API server rejected the token: {reason}")
    audiences = status.get("audiences")
    if not isinstance(audiences, list) or audience not in audiences:
        raise AuthenticationError(f"the token is not valid for audience {audience!r}")
    user = status.get("user")
    user = user if isinstance(user, Mapping) else {}
    username = str(user.get("username", ""))
    parts = username.removeprefix(SERVICE_ACCOUNT_USER).split(":")
    if not username.startswith(SERVICE_ACCOUNT_USER) or len(parts) != 2 or not all(parts):
        raise AuthenticationError(f"{username or 'the token'} is not a service account")
    extra = user.get("extra")
    extra = extra if isinstance(extra, Mapping) else {}

    def first(key: str) -> str:
        values = extra.get(key)
        return str(values[0]) if isinstance(values, list) and values else ""

    pod = first(POD_NAME)
    if not pod:
        raise AuthenticationError(
            f"the token of {parts[0]}/{parts[1]} is not bound to a pod (use a projected token)"
        )
    return ReviewedAccount(parts[0], parts[1], pod, first(POD_UID), first(NODE_NAME))


class KubernetesAuthenticator:
    """Service-account tokens through TokenReview; node tokens through `node_tokens`."""

    def __init__(
        self,
        reviewer: Reviewer,
        pods: PodLookup,
        node_tokens: TokenAuthenticator,
        trust_domain: str,
        trusted_node_accounts: tuple[str, ...] = DEFAULT_TRUSTED_NODE_ACCOUNTS,
        audience: str = CA_AUDIENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._review = reviewer
        self._pods = pods
        self._node_tokens = node_tokens
        self._trust_domain = trust_domain
        self._trusted = frozenset(trusted_node_accounts)
        self._audience = audience
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Caller]] = {}

    def authenticate(self, metadata: Mapping[str, str]) -> Caller:
        token = bearer_token(metadata)
        if token.startswith(TOKEN_PREFIX):
            return self._node_tokens.authenticate(metadata)
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        caller = self._caller(token)
        with self._lock:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_ENTRIES:
                    self._cache.clear()
            self._cache[key] = (now + CACHE_SECONDS, caller)
        return caller

    def _caller(self, token: str) -> Caller:
        try:
            review = self._review(token, (self._audience,))
        except AuthenticationError:
            raise
        except Exception as e:  # the client's ApiException, urllib3 errors, timeouts alike
            log.warning("TokenReview failed: %s", e)
            raise AuthenticationError(f"cannot review the token with the API server: {e}") from None
        account = reviewed_account(review, self._audience)
        who = f"{account.namespace}/{account.service_account}"
        node = account.node
        if not node:
            found = self._pods(account.namespace, account.pod)
            if found is None:
                raise AuthenticationError(
                    f"the token of {who} is bound to pod {account.namespace}/{account.pod}, "
                    "which is not known (yet)"
                )
            node, uid = found
            if account.pod_uid and uid and uid != account.pod_uid:
                raise AuthenticationError(
                    f"the token of {who} is bound to an earlier pod "
                    f"{account.namespace}/{account.pod} (uid {account.pod_uid})"
                )
            if not node:
                raise AuthenticationError(f"pod {account.namespace}/{account.pod} has no node yet")
        if who in self._trusted:
            return Caller(node)
        return Caller(
            node, Identity(self._trust_domain, account.namespace, account.service_account)
        )


def store_pods(store: ConfigStore) -> PodLookup:
    """Pods' nodes and uids from the configuration the control plane watches."""

    def lookup(namespace: str, name: str) -> tuple[str, str] | None:
        pod = store.resources().get(ResourceKey("Pod", namespace, name))
        if pod is None:
            return None
        spec = pod.body.get("spec") or {}
        return str(spec.get("nodeName") or ""), str(pod.metadata.get("uid") or "")

    return lookup


def token_reviewer(api_client: Any) -> Reviewer:
    """TokenReviews through the official client (blocking: the gRPC servicer threads call it)."""

    from kubernetes import client

    def review(token: str, audiences: tuple[str, ...]) -> Mapping[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        return api_call(client.AuthenticationV1Api(api_client).create_token_review, body)

    return review
