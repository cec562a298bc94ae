"""Multi-document YAML (kubectl style) to `Document`s, remembering where every value starts.

YAML is read the way Kubernetes reads it: timestamps stay strings, duplicate keys are refused
(sigs.k8s.io/yaml's strict mode), empty documents are skipped but still counted, so
`file:doc[2]` is the third `---` section a person sees. A syntax error is a `Diagnostic` with
its line and column; documents before it are returned too (the validate command reports them,
the store ignores a file with any syntax error and keeps its previous contents).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.error import Mark

from ztunnel_py.controlplane.resources import Diagnostic, Document, Origin

# Aliases let a small file expand into a huge tree; past this many values we refuse a document.
MAX_EXPANDED_VALUES = 200_000
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


@dataclass(frozen=True, slots=True)
class Parsed:
    documents: tuple[Document, ...]
    error: Diagnostic | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader recording positions, refusing duplicate keys, keeping timestamps as text."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self.positions: dict[int, dict[Any, tuple[int, int]]] = {}


def _position(mark: Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    seen: set[object] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    data.update(loader.construct_mapping(node))
    loader.positions[id(data)] = {
        loader.construct_object(k): _position(v.start_mark) for k, v in node.value
    }


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Iterator[list[Any]]:
    data: list[Any] = []
    yield data
    data.extend(loader.construct_sequence(node))
    loader.positions[id(data)] = {
        i: _position(item.start_mark) for i, item in enumerate(node.value)
    }


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


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
            too_big = _expansion_problem(body)
            if too_big:
                return Parsed(tuple(documents), Diagnostic(origin, "", too_big, line=line))
            documents.append(Document(origin, body, line, loader.positions))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "syntax error"
        if e.context:
            problem = f"{e.context}: {problem}"
        line, column = _position(mark) if mark is not None else (None, None)
        error = Diagnostic(
            Origin(source, index), "", f"invalid YAML: {problem}", line=line, column=column
        )
        return Parsed(tuple(documents), error)
    except yaml.reader.ReaderError as e:
        problem = f"{e.reason} (character {e.character!r} at offset {e.position})"
        return Parsed(
            tuple(documents), Diagnostic(Origin(source, index), "", f"invalid YAML: {problem}")
        )
    except RecursionError:
        return Parsed(
            tuple(documents),
            Diagnostic(Origin(source, index), "", "invalid YAML: nested too deeply"),
        )
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        # PyYAML's scalar constructors raise ValueError & co on odd input (e.g. `!!int x`).
        return Parsed(tuple(documents), Diagnostic(Origin(source, index), "", f"invalid YAML: {e}"))
    finally:
        if loader is not None:
            loader.dispose()
    return Parsed(tuple(documents))


def _expansion_problem(doc: object) -> str | None:
    """Refuse recursive anchors and alias bombs before anything walks the tree."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[object, bool]] = [(doc, False)]
    while stack:
        obj, post = stack.pop()
        if isinstance(obj, dict):
            children: list[object] = [*obj.keys(), *obj.values()]
        elif isinstance(obj, list):
            children = obj
        else:
            continue
        oid = id(obj)
        if post:
            on_path.discard(oid)
            size = 1 + sum(sizes.get(id(c), 1) for c in children)
            if size > MAX_EXPANDED_VALUES:
                return f"the document expands to more than {MAX_EXPANDED_VALUES} values"
            sizes[oid] = size
        elif oid not in sizes:
            if oid in on_path:
                return "recursive YAML aliases are not supported"
            on_path.add(oid)
            stack.append((obj, True))
            stack.extend((c, False) for c in children)
    return None
