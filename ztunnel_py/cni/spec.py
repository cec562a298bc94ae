"""The CNI side of `ztunnel-py cni`, without I/O: environment and stdin in, decisions and JSON out.

The plugin follows the CNI specification (versions 0.3.0 to 1.1.0) as a *chained* plugin: it
runs after the primary plugin, which created the pod's interface and addresses, and passes that
plugin's result (`prevResult`) through unchanged. A request is the `CNI_*` environment
variables plus the network configuration JSON on stdin; an error is the spec's error object
(`{"cniVersion", "code", "msg", "details"}`) on stdout with a non-zero exit status.

Plugin-specific configuration keys (next to `cniVersion`, `name`, `type`):

- `enrollSocket`: the agent's enrollment socket (default /var/run/ztunnel/ztunnel.sock);
- `excludeNamespaces`: namespaces whose pods are passed through without a look at their labels;
- `kubeconfig`: a kubeconfig file; when set, namespace labels, pod labels and the pod's service
  account are read from the Kubernetes API server;
- otherwise they come from the configuration itself (the testbed and development setups):
  `namespaceLabels` maps a namespace to its labels, and `pods` maps `"<namespace>/<name>"` to
  `{"serviceAccount": ..., "labels": {...}}`. A namespace or pod not listed has no labels, and
  a pod not listed runs as service account `default`.

A pod is enrolled when its namespace carries `istio.io/dataplane-mode=ambient` and the pod does
not carry `istio.io/dataplane-mode=none`. The pod is named by the `K8S_POD_NAMESPACE` and
`K8S_POD_NAME` keys of `CNI_ARGS`; an invocation without them is not for a Kubernetes pod and is
passed through untouched.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.model.names import dns1123_label, dns1123_subdomain
from ztunnel_py.model.workload import pod_uid

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_ERROR_VERSION = "1.0.0"
DEFAULT_ENROLL_SOCKET = "/var/run/ztunnel/ztunnel.sock"
DATAPLANE_MODE = "istio.io/dataplane-mode"
MAX_STDIN = 4 << 20

# Well-known error codes (CNI spec, "Error codes"); 100 and up are this plugin's own.
INCOMPATIBLE_VERSION = 1
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
ENROLLMENT_REFUSED = 100
LOOKUP_FAILED = 101

# CNI spec 1.0: container ids are alphanumerics plus '_', '.', '-'.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# Kubernetes object UIDs are UUIDs; allow their hex-and-dash shape, nothing else.
_POD_UID = re.compile(r"[0-9A-Fa-f-]{1,64}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(Exception):
    """A failed request: rendered as the spec's error object, exit status non-zero."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> str:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body)


class Command(enum.Enum):
    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    VERSION = "VERSION"
    STATUS = "STATUS"
    GC = "GC"


# The first spec version that defines each command (VERSION, ADD and DEL exist in all).
_SINCE = {Command.CHECK: "0.4.0", Command.STATUS: "1.1.0", Command.GC: "1.1.0"}


@dataclass(frozen=True, slots=True)
class PodRef:
    """The Kubernetes pod an invocation is for, from CNI_ARGS."""

    namespace: str
    name: str
    k8s_uid: str = ""

    @property
    def uid(self) -> str:
        """The workload uid the agent knows the pod by (ztunnel's `Kubernetes//Pod/ns/name`)."""
        return pod_uid(self.namespace, self.name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodMeta:
    """What enrollment needs to know about a pod beyond its name."""

    service_account: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def enroll(self) -> bool:
        return should_enroll(self.namespace_labels, self.labels)


@dataclass(frozen=True, slots=True)
class PluginConfig:
    cni_version: str
    name: str
    enroll_socket: str
    kubeconfig: str | None
    namespace_labels: Mapping[str, Mapping[str, str]]
    pods: Mapping[str, PodMeta]
    prev_result: dict[str, Any] | None
    exclude_namespaces: frozenset[str] = frozenset()

    def static_meta(self, pod: PodRef) -> PodMeta:
        """The pod's service account and labels from the configuration's own tables."""
        listed = self.pods.get(pod.key, PodMeta())
        return PodMeta(
            service_account=listed.service_account,
            labels=listed.labels,
            namespace_labels=self.namespace_labels.get(pod.namespace, {}),
        )


@dataclass(frozen=True, slots=True)
class Invocation:
    command: Command
    container_id: str
    netns: str
    ifname: str
    path: tuple[str, ...]
    args: Mapping[str, str]
    config: PluginConfig

    @property
    def pod(self) -> PodRef | None:
        """The pod, if CNI_ARGS names one (a Kubernetes runtime always does)."""
        namespace = self.args.get("K8S_POD_NAMESPACE", "")
        name = self.args.get("K8S_POD_NAME", "")
        if not namespace or not name:
            return None
        return PodRef(namespace, name, self.args.get("K8S_POD_UID", ""))


def should_enroll(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    """Istio's ambient rule: the namespace opts in, and the pod has not opted out."""
    return (
        namespace_labels.get(DATAPLANE_MODE) == "ambient"
        and pod_labels.get(DATAPLANE_MODE) != "none"
    )


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def supports(version: str, command: Command) -> bool:
    since = _SINCE.get(command)
    return since is None or _version_key(version) >= _version_key(since)


def parse_command(env: Mapping[str, str]) -> Command:
    value = env.get("CNI_COMMAND", "")
    if not value:
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
            "`ztunnel-py cni` is a CNI plugin: the container runtime runs it with CNI_COMMAND "
            "(ADD, DEL, CHECK, VERSION, STATUS, GC), the other CNI_* variables and the network "
            "configuration on stdin",
        )
    try:
        return Command(value)
    except ValueError:
        names = ", ".join(c.value for c in Command)
        raise CniError(
            INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {value!r}", f"expected one of {names}"
        ) from None


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: `KEY=VALUE` pairs separated by semicolons (e.g. `K8S_POD_NAME=web-1;...`)."""
    result: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_ARGS: {pair!r} is not KEY=VALUE",
                f"CNI_ARGS was {text!r}",
            )
        result[key] = value
    return result


def _json(stdin: bytes) -> Any:
    """json.loads, with every way it refuses input as ValueError."""
    try:
        return json.loads(stdin)
    except RecursionError:  # arrays or objects nested thousands deep
        raise ValueError("nested too deeply") from None


def _decode(stdin: bytes) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN:
        raise CniError(DECODING_FAILURE, f"network configuration larger than {MAX_STDIN} bytes")
    try:
        value = _json(stdin)
    except ValueError as e:  # UnicodeDecodeError included
        raise CniError(
            DECODING_FAILURE, "network configuration on stdin is not JSON", str(e)
        ) from None
    if not isinstance(value, dict):
        raise CniError(
            DECODING_FAILURE,
            "network configuration on stdin is not a JSON object",
            f"got {type(value).__name__}",
        )
    return value


def _declared(stdin: bytes) -> str | None:
    try:
        value = _json(stdin)
    except ValueError:
        return None
    version = value.get("cniVersion") if isinstance(value, dict) else None
    return version if version in SUPPORTED_VERSIONS else None


def declared_version(stdin: bytes) -> str:
    """The configuration's cniVersion if it is one we speak (for error objects), else 1.0.0."""
    return _declared(stdin) or DEFAULT_ERROR_VERSION


def version_answer(stdin: bytes) -> str:
    """The VERSION result: our versions, echoing the caller's cniVersion when we speak it."""
    version = _declared(stdin) or SUPPORTED_VERSIONS[-1]
    return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})


def _string(config: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = config.get(key, default)
    if value is not None and not isinstance(value, str):
        raise CniError(INVALID_CONFIG, f"network configuration: {key!r} must be a string")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise CniError(
            INVALID_CONFIG, f"network configuration: {where} must map strings to strings"
        )
    return dict(value)


def _namespace_labels(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, "network configuration: 'namespaceLabels' must be an object")
    return {ns: _labels(labels, f"namespaceLabels[{ns!r}]") for ns, labels in value.items()}


def _pods(value: Any) -> dict[str, PodMeta]:
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, "network configuration: 'pods' must be an object")
    pods: dict[str, PodMeta] = {}
    for key, entry in value.items():
        where = f"pods[{key!r}]"
        if key.count("/") != 1 or not isinstance(entry, dict):
            raise CniError(
                INVALID_CONFIG,
                f"network configuration: {where} must be keyed NAMESPACE/NAME and be an object",
            )
        unknown = set(entry) - {"serviceAccount", "labels"}
        if unknown:
            raise CniError(
                INVALID_CONFIG,
                f"network configuration: {where} has unknown keys {sorted(unknown)}; "
                "expected serviceAccount, labels",
            )
        sa = entry.get("serviceAccount", "default")
        if not isinstance(sa, str) or not sa:
            raise CniError(INVALID_CONFIG, f"network configuration: {where}.serviceAccount")
        pods[key] = PodMeta(sa, _labels(entry.get("labels", {}), f"{where}.labels"))
    return pods


def parse_config(stdin: bytes) -> PluginConfig:
    raw = _decode(stdin)
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"CNI version {version} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = _string(raw, "name")
    if not name or not _NAME.match(name):
        raise CniError(
            INVALID_CONFIG,
            "network configuration needs a 'name' (alphanumerics, '_', '.', '-')",
        )
    kubeconfig = _string(raw, "kubeconfig")
    static = [k for k in ("namespaceLabels", "pods") if k in raw]
    if kubeconfig and static:
        raise CniError(
            INVALID_CONFIG,
            f"network configuration sets both 'kubeconfig' and {', '.join(map(repr, static))}",
            "labels and service accounts come either from the API server or from the "
            "configuration, not both",
        )
    excluded = raw.get("excludeNamespaces", [])
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise CniError(
            INVALID_CONFIG, "network configuration: 'excludeNamespaces' must be a list of strings"
        )
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "network configuration: 'prevResult' must be an object")
    return PluginConfig(
        cni_version=version,
        name=name,
        enroll_socket=_string(raw, "enrollSocket", DEFAULT_ENROLL_SOCKET) or DEFAULT_ENROLL_SOCKET,
        kubeconfig=kubeconfig or None,
        namespace_labels=_namespace_labels(raw.get("namespaceLabels", {})),
        pods=_pods(raw.get("pods", {})),
        prev_result=prev,
        exclude_namespaces=frozenset(excluded),
    )


def _check_pod_names(args: Mapping[str, str]) -> None:
    """The pod's namespace, name and uid as Kubernetes allows them: a runtime passes only such
    names, and anything else (a newline forging a log line, say) is refused here."""
    for key, check in (("K8S_POD_NAMESPACE", dns1123_label), ("K8S_POD_NAME", dns1123_subdomain)):
        value = args.get(key, "")
        problem = check(value) if value else None
        if problem is not None:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS {key}: {problem}")
    uid = args.get("K8S_POD_UID", "")
    if uid and not _POD_UID.fullmatch(uid):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS K8S_POD_UID: {uid!r} is not a UID")


def _require(env: Mapping[str, str], key: str, command: Command) -> str:
    value = env.get(key, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{key} is required for {command.value}")
    return value


def parse_invocation(command: Command, env: Mapping[str, str], stdin: bytes) -> Invocation:
    """Validate everything a non-VERSION request carries; CniError names the first problem."""
    config = parse_config(stdin)
    if not supports(config.cni_version, command):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"CNI version {config.cni_version} does not define {command.value}",
            f"{command.value} needs cniVersion {_SINCE[command]} or later",
        )
    container_id = netns = ifname = ""
    if command in (Command.ADD, Command.DEL, Command.CHECK):
        container_id = _require(env, "CNI_CONTAINERID", command)
        if not _CONTAINER_ID.match(container_id):
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_CONTAINERID {container_id!r} has characters outside [A-Za-z0-9_.-]",
            )
        ifname = _require(env, "CNI_IFNAME", command)
        if command is Command.DEL:
            # DEL may come after the namespace is gone, so the runtime may leave CNI_NETNS out.
            netns = env.get("CNI_NETNS", "")
        else:
            netns = _require(env, "CNI_NETNS", command)
        if command in (Command.ADD, Command.CHECK) and config.prev_result is None:
            raise CniError(
                INVALID_CONFIG,
                f"{command.value} without prevResult",
                "ztunnel-py is a chained plugin: list it after the primary plugin (the one that "
                "creates the pod's interface) in the network configuration list",
            )
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    _check_pod_names(args)
    return Invocation(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        path=path,
        args=args,
        config=config,
    )


def add_result(config: PluginConfig) -> str:
    """ADD's result: the previous plugin's result, passed through unchanged."""
    assert config.prev_result is not None
    result = dict(config.prev_result)
    # A runtime always puts cniVersion in the result it hands on; keep ours valid if it did not.
    result.setdefault("cniVersion", config.cni_version)
    return json.dumps(result)
