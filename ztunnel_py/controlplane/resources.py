"""Configuration as the control plane holds it: documents from a source, diagnostics about them,
and the validated resources (kind, namespace, name, body) that translation reads.

A `Document` is one parsed YAML/JSON object with where it came from (`Origin`: a file and the
document's index in it, or a Kubernetes object). Validation turns a document into a `Resource`
or into `Diagnostic`s; every diagnostic names the origin, the field path and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.yamlschema.problems import Positions, Problem, Severity

ROOT_NAMESPACE = "istio-system"


@dataclass(frozen=True, slots=True, order=True)
class Origin:
    """Where a document came from: `source` (a file path, or `kube:<Kind>`) and its index."""

    source: str
    index: int = 0

    def __str__(self) -> str:
        return f"{self.source}:doc[{self.index}]"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem: `file:doc[index]: field.path: reason` (warnings say `warning:`)."""

    origin: Origin
    path: str
    reason: str
    severity: Severity = Severity.ERROR
    line: int | None = None
    column: int | None = None

    @classmethod
    def of(cls, origin: Origin, problem: Problem) -> Diagnostic:
        """A problem found in the document from `origin`."""
        return cls(
            origin, problem.path, problem.reason, problem.severity, problem.line, problem.column
        )

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.origin}: {self.path or '<document>'}: "
        kind = "" if self.severity is Severity.ERROR else f"{self.severity.value}: "
        at = f" (line {self.line}, column {self.column})" if self.line is not None else ""
        return f"{where}{kind}{self.reason}{at}"


@dataclass(frozen=True, slots=True, order=True)
class ResourceKey:
    kind: str
    namespace: str  # "" for cluster-scoped kinds (Namespace)
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind} {self.name}"
        )


@dataclass(frozen=True, slots=True)
class Resource:
    """A validated object. `body` is the document as written (never mutated)."""

    key: ResourceKey
    api_version: str
    body: Mapping[str, Any] = field(compare=True, hash=False)
    origin: Origin = field(default=Origin(""), compare=False)

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def namespace(self) -> str:
        return self.key.namespace

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def metadata(self) -> Mapping[str, Any]:
        meta: Mapping[str, Any] = self.body.get("metadata") or {}
        return meta

    @property
    def labels(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = self.metadata.get("labels") or {}
        return labels

    @property
    def annotations(self) -> Mapping[str, str]:
        annotations: Mapping[str, str] = self.metadata.get("annotations") or {}
        return annotations

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = self.body.get("spec") or {}
        return spec

    @property
    def status(self) -> Mapping[str, Any]:
        status: Mapping[str, Any] = self.body.get("status") or {}
        return status


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed document; `positions` locates values for error messages (empty for JSON)."""

    origin: Origin
    body: object
    line: int | None = None
    positions: Positions = field(default_factory=dict)
    # Objects from the Kubernetes API are already schema-checked by the API server, possibly a
    # newer one: unknown fields are tolerated there, while files are checked strictly.
    strict: bool = True
