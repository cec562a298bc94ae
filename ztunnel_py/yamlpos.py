"""YAML loading for configuration people write: positions of every value, strict keys, no bombs.

Shared by the agent's local-config reader and the control plane's resource reader, so both
point at the same line and column for a bad value, refuse duplicate keys (as ztunnel's serde and
Kubernetes' strict YAML do) and refuse recursive aliases or alias bombs before walking a tree.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.error import Mark

Position = tuple[int, int]  # 1-based (line, column)


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


def describe_value(value: object) -> str:
    """How a loaded YAML value reads in an error message ("expected a list, got a string")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean (YAML reads yes/no/on/off/true/false as booleans: quote it)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date (quote it)"
    return f"a {type(value).__name__}"
