"""Pod and namespace facts from the Kubernetes API server, for the plugin's `kubeconfig` mode.

Two reads per enrollment decision: the namespace (its labels) and the pod (its labels and
service account), with the `kubernetes` client; and one patch once the pod is enrolled (or let
go), as Istio's CNI agent does: the annotation `ambient.istio.io/redirection: enabled`, which the
control plane waits for before it sends the pod as HBONE. The client is imported only when a
configuration names a kubeconfig, so the testbed and development setups never pay for it.
"""

from __future__ import annotations

from typing import Any

from ztunnel_py.cni.spec import LOOKUP_FAILED, CniError, PodMeta, PodRef

REQUEST_TIMEOUT = 10.0
REDIRECTION = "ambient.istio.io/redirection"
REDIRECTION_ENABLED = "enabled"


def _labels(obj: Any) -> dict[str, str]:
    return dict(obj.metadata.labels or {})


def _api_client(kubeconfig: str) -> Any:
    # Imported here: the client takes a noticeable time to import, and only this mode needs it.
    from kubernetes import config

    try:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception as e:  # the client raises ConfigException, OSError, yaml errors...
        raise CniError(LOOKUP_FAILED, f"cannot load kubeconfig {kubeconfig}", str(e)) from None


def lookup(kubeconfig: str, pod: PodRef, timeout: float = REQUEST_TIMEOUT) -> PodMeta:
    """Labels of the pod and its namespace, and its service account; CniError on any failure."""
    from kubernetes import client

    api_client = _api_client(kubeconfig)
    try:
        core = client.CoreV1Api(api_client)
        namespace = core.read_namespace(pod.namespace, _request_timeout=timeout)
        found = core.read_namespaced_pod(pod.name, pod.namespace, _request_timeout=timeout)
    except Exception as e:  # ApiException, urllib3 errors and timeouts alike
        raise CniError(
            LOOKUP_FAILED,
            f"cannot read pod {pod.key} or its namespace from the Kubernetes API",
            str(e),
        ) from None
    finally:
        api_client.close()
    return PodMeta(
        service_account=(found.spec.service_account_name if found.spec else None) or "default",
        labels=_labels(found),
        namespace_labels=_labels(namespace),
    )


def set_redirection(
    kubeconfig: str, pod: PodRef, enabled: bool, timeout: float = REQUEST_TIMEOUT
) -> None:
    """Mark the pod redirected (or no longer): a merge patch of its annotation. CniError on any
    failure."""
    from kubernetes import client

    value = REDIRECTION_ENABLED if enabled else None  # None deletes the key in a merge patch
    body = {"metadata": {"annotations": {REDIRECTION: value}}}
    api_client = _api_client(kubeconfig)
    try:
        client.CoreV1Api(api_client).patch_namespaced_pod(
            pod.name, pod.namespace, body, _request_timeout=timeout
        )
    except Exception as e:  # ApiException, urllib3 errors and timeouts alike
        raise CniError(
            LOOKUP_FAILED,
            f"cannot {'annotate' if enabled else 'clear the annotation of'} pod {pod.key} "
            f"({REDIRECTION}) in the Kubernetes API",
            str(e),
        ) from None
    finally:
        api_client.close()
