"""The CA's root in a cluster, as istiod keeps it: in a Secret, published in ConfigMaps.

- `secret_ca`: the root CA from the Secret `--ca-secret NAMESPACE/NAME` (istiod's self-signed
  `istio-system/istio-ca-secret`, keys `ca-cert.pem` and `ca-key.pem`). When there is none, a
  new root is created and the Secret with it; if another replica created it first (409), its
  root is used. So every replica and every restart signs with the same root, and a pod's
  emptyDir is enough for the data directory.
- `RootPublisher`: the ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every namespace
  of the configuration, which agents (the ztunnel DaemonSet) and waypoints mount to verify the
  control plane and each other. Made or corrected whenever the configuration changes and every
  `REPUBLISH_SECONDS`.

Both use the API server directly (GET, then POST or PUT), with the rights deploy/ grants:
secrets get/create in the control plane's namespace, configmaps get/create/update.
Verification: tested against a stand-in API server; not against a real one.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ztunnel_py.identity.pki import ROOT_CERT_FILE, ROOT_KEY_FILE, CertificateAuthority

log = logging.getLogger("ztunnel_py.controlplane.kubeca")

SECRET_CERT = "ca-cert.pem"
SECRET_KEY = "ca-key.pem"
ROOT_CONFIGMAP = "istio-ca-root-cert"
CONFIGMAP_KEY = "root-cert.pem"
REPUBLISH_SECONDS = 60.0
REQUEST_TIMEOUT = 10.0


class KubeRequestError(Exception):
    """An API request failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def api_call(call: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """One call of the official client's typed API (`CoreV1Api(...).read_namespaced_secret`,
    ...), its JSON answer as a dict; KubeRequestError for any failure."""
    from kubernetes.client.exceptions import ApiException

    what = getattr(call, "__name__", "request")
    try:
        response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as e:
        raise KubeRequestError(int(e.status or 0), f"{what}: {e.status} {e.reason}") from None
    except Exception as e:  # urllib3 errors, timeouts
        raise KubeRequestError(0, f"{what}: {e}") from None
    answer = json.loads(response.data or b"{}")
    if not isinstance(answer, dict):
        raise KubeRequestError(0, f"{what}: the answer is not a JSON object")
    return answer


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _from_secret(secret: dict[str, Any], ca_dir: Path) -> CertificateAuthority:
    data = secret.get("data") or {}
    try:
        cert = base64.b64decode(data[SECRET_CERT])
        key = base64.b64decode(data[SECRET_KEY])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"the CA Secret has no valid {SECRET_CERT} and {SECRET_KEY}: {e}"
        ) from None
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (ca_dir / ROOT_KEY_FILE).write_bytes(key)
    (ca_dir / ROOT_KEY_FILE).chmod(0o600)
    (ca_dir / ROOT_CERT_FILE).write_bytes(cert)
    return CertificateAuthority.load(ca_dir)


def secret_ca(
    api_client: Any, secret: str, ca_dir: Path, trust_domain: str
) -> CertificateAuthority:
    """The root CA kept in Secret `secret` (NAMESPACE/NAME), created there if missing; it is
    also written to `ca_dir`. ValueError or KubeRequestError when it cannot be had."""
    namespace, _, name = secret.partition("/")
    try:
        found = api_call(_core(api_client).read_namespaced_secret, name, namespace)
        log.info("loaded the root CA from Secret %s", secret)
        return _from_secret(found, ca_dir)
    except KubeRequestError as e:
        if e.status != 404:
            raise
    ca = CertificateAuthority.create(trust_domain)
    ca.save(ca_dir)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "istio.io/ca-root",
        "data": {
            SECRET_CERT: base64.b64encode((ca_dir / ROOT_CERT_FILE).read_bytes()).decode(),
            SECRET_KEY: base64.b64encode((ca_dir / ROOT_KEY_FILE).read_bytes()).decode(),
        },
    }
    try:
        api_call(_core(api_client).create_namespaced_secret, namespace, body)
    except KubeRequestError as e:
        if e.status != 409:
            raise
        log.info("Secret %s was created meanwhile (another replica): using its root", secret)
        again = api_call(_core(api_client).read_namespaced_secret, name, namespace)
        return _from_secret(again, ca_dir)
    log.info("created a new root CA and stored it in Secret %s", secret)
    return ca


def root_configmap(namespace: str, root_pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIGMAP,
            "namespace": namespace,
            "labels": {"istio.io/config": "true"},
        },
        "data": {CONFIGMAP_KEY: root_pem},
    }


def publish_root(api_client: Any, namespace: str, root_pem: str) -> str | None:
    """Make `istio-ca-root-cert` in `namespace` hold `root_pem`: "created", "updated" or None
    (already right). KubeRequestError when the API server refuses."""
    core = _core(api_client)
    try:
        current = api_call(core.read_namespaced_config_map, ROOT_CONFIGMAP, namespace)
    except KubeRequestError as e:
        if e.status != 404:
            raise
        api_call(core.create_namespaced_config_map, namespace, root_configmap(namespace, root_pem))
        return "created"
    if (current.get("data") or {}).get(CONFIGMAP_KEY) == root_pem:
        return None
    body = root_configmap(namespace, root_pem)
    body["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
    api_call(core.replace_namespaced_config_map, ROOT_CONFIGMAP, namespace, body)
    return "updated"


class RootPublisher:
    """Keeps `istio-ca-root-cert` right in every namespace `namespaces()` names."""

    def __init__(
        self, api_client: Any, root_pem: str, namespaces: Callable[[], Iterable[str]]
    ) -> None:
        self._api = api_client
        self._root = root_pem
        self._namespaces = namespaces
        self._wake = threading.Event()

    def changed(self) -> None:
        """The configuration changed: look again soon (new namespaces)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            self.publish_all()
            self._wake.wait(REPUBLISH_SECONDS)

    def publish_all(self) -> None:
        """One pass over every namespace."""
        for namespace in sorted(set(self._namespaces())):
            try:
                outcome = publish_root(self._api, namespace, self._root)
            except KubeRequestError as e:
                log.warning("cannot publish %s in %s: %s", ROOT_CONFIGMAP, namespace, e)
                continue
            if outcome is not None:
                log.info("%s %s in namespace %s", outcome, ROOT_CONFIGMAP, namespace)
