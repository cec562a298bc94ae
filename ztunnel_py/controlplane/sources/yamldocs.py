"""Multi-document YAML (kubectl style) to `Document`s, remembering where every value starts.

YAML is read the way Kubernetes reads it: timestamps stay strings, duplicate keys are refused
(sigs.k8s.io/yaml's strict mode), empty documents are skipped but still counted, so
`file:doc[2]` is the third `---` section a person sees. A syntax error is a `Diagnostic` with
its line and column; documents before it are returned too (the validate command reports them,
the store ignores a file with any syntax error and keeps its previous contents).
"""

from __future__ import annotations

from dataclasses import dataclass

from ztunnel_py.controlplane.resources import Diagnostic, Document, Origin
from ztunnel_py.yamlschema.loading import (
    YAML_ERRORS,
    PositionLoader,
    expansion_problem,
    syntax_problem,
)

# Aliases let a small file expand into a huge tree; past this many values we refuse a document.
MAX_EXPANDED_VALUES = 200_000
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, slots=True)
class Parsed:
    documents: tuple[Document, ...]
    error: Diagnostic | None = None


class _Loader(PositionLoader):
    """Kubernetes reads timestamps as strings: drop the implicit timestamp resolver."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in PositionLoader.yaml_implicit_resolvers.items()
    }


def parse_documents(text: str | bytes, source: str) -> Parsed:
    """Every document of `text` (a file's contents); never raises."""
    documents: list[Document] = []
    index = 0
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1 if node is not None else None
            body = loader.construct_document(node) if node is not None else None
            origin = Origin(source, index)
            index += 1
            if body is None:
                continue
            too_big = expansion_problem(body, MAX_EXPANDED_VALUES)
            if too_big:
                return Parsed(tuple(documents), Diagnostic(origin, "", too_big, line=line))
            documents.append(Document(origin, body, line, loader.positions))
    except YAML_ERRORS as e:
        return Parsed(tuple(documents), Diagnostic.of(Origin(source, index), syntax_problem(e)))
    finally:
        if loader is not None:
            loader.dispose()
    return Parsed(tuple(documents))
