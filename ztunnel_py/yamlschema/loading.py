"""YAML loading for configuration people write: positions of every value, strict keys, no bombs.

Every reader of YAML uses this loader, so all of them point at the same line and column for a
bad value, refuse duplicate keys (as ztunnel's serde and Kubernetes' strict YAML do), refuse
recursive aliases or alias bombs before walking a tree, and word a syntax error the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.error import Mark

from ztunnel_py.yamlschema.problems import Position, Problem

# What PyYAML raises on bad input: its own errors, RecursionError on deep nesting, and
# ValueError & co from its scalar constructors on odd input (e.g. `!!int x`, `2001-02-30`).
YAML_ERRORS = (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError)


def position(mark: Mark) -> Position:
    return mark.line + 1, mark.column + 1


class PositionLoader(yaml.SafeLoader):
    """A SafeLoader that remembers where each mapping value and list item starts."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        # id(container) -> positions of its children (keyed like the container itself)
        self.positions: dict[int, dict[Any, Position]] = {}


def _construct_map(loader: PositionLoader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    # PyYAML keeps the last of two equal keys; we refuse them.
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
    # construct_mapping has flattened merge keys into node.value; constructed keys are cached.
    loader.positions[id(data)] = {
        loader.construct_object(k): position(v.start_mark) for k, v in node.value
    }


def _construct_seq(loader: PositionLoader, node: yaml.SequenceNode) -> Iterator[list[Any]]:
    data: list[Any] = []
    yield data
    data.extend(loader.construct_sequence(node))
    loader.positions[id(data)] = {i: position(item.start_mark) for i, item in enumerate(node.value)}


PositionLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
PositionLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def syntax_problem(error: BaseException) -> Problem:
    """The `invalid YAML` problem for one of YAML_ERRORS, with the position PyYAML knows."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        reason = error.problem or "syntax error"
        if error.context:
            reason = f"{error.context}: {reason}"
        line, column = position(mark) if mark is not None else (None, None)
        return Problem("", f"invalid YAML: {reason}", line=line, column=column)
    if isinstance(error, yaml.reader.ReaderError):
        return Problem(
            "",
            f"invalid YAML: {error.reason} (character {error.character!r} at offset "
            f"{error.position})",
        )
    if isinstance(error, RecursionError):
        return Problem("", "invalid YAML: nested too deeply")
    return Problem("", f"invalid YAML: {error}")


def expansion_problem(doc: object, limit: int) -> str | None:
    """Why `doc` must be refused (recursive aliases, or more than `limit` values once aliases
    are expanded), or None."""
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
            if size > limit:
                return f"the document expands to more than {limit} values"
            sizes[oid] = size
        elif oid not in sizes:
            if oid in on_path:
                return "recursive YAML aliases are not supported"
            on_path.add(oid)
            stack.append((obj, True))
            stack.extend((c, False) for c in children)
    return None
