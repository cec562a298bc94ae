"""A small schema language for YAML documents, written as Python data.

Each schema checks one value and reports every problem it finds (not just the first) through a
`Checker`, with the value's field path (`spec.ports[0].targetPort`) and its line and column when
the document came from YAML text. Objects know their fields: an unknown field is an error in
strict mode (files) and ignored otherwise (objects from a Kubernetes API server, possibly newer
than our tables). Semantic checks that need several fields run as `Obj` hooks, only when the
object's own fields are well-formed, so a hook can trust the shapes it reads, and so can a
reader that builds typed values from a document without problems.

A format is a module of schema constants (see `controlplane/validation/` and
`xds/localconfig.py`); a shape this module lacks is a small `Schema` subclass next to them.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.yamlschema.problems import Position, Positions, Problem, Severity

# A value check: returns the reason the value is wrong, or None.
StrCheck = Callable[[str], str | None]

# Unknown-field errors list the expected fields when an object has at most this many.
_LISTED_FIELDS = 12


@dataclass(frozen=True, slots=True)
class Node:
    """A value inside a document, with its field path and position."""

    value: Any
    path: str
    pos: Position | None = None

    def field_path(self, key: object) -> str:
        if isinstance(key, str) and _PLAIN_KEY.match(key):
            return f"{self.path}.{key}" if self.path else key
        label = f'"{key}"' if isinstance(key, str) else repr(key)
        return f"{self.path}[{label}]"

    def missing(self, key: str) -> Node:
        """The absent field `key` of this object, located at the object."""
        return Node(None, self.field_path(key), self.pos)


_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


class Checker:
    """Collects the problems of one document."""

    def __init__(self, positions: Positions, strict: bool = True) -> None:
        self.positions = positions
        self.strict = strict
        self.problems: list[Problem] = []
        self.error_count = 0

    def error(self, node: Node, reason: str) -> None:
        self._add(node, reason, Severity.ERROR)
        self.error_count += 1

    def warn(self, node: Node, reason: str) -> None:
        self._add(node, reason, Severity.WARNING)

    def note(self, node: Node, reason: str) -> None:
        self._add(node, reason, Severity.NOTE)

    def _add(self, node: Node, reason: str, severity: Severity) -> None:
        line, column = node.pos if node.pos is not None else (None, None)
        self.problems.append(Problem(node.path, reason, severity, line, column))

    def child(self, parent: Node, key: object, path: str | None = None) -> Node:
        value = parent.value[key]
        pos = self.positions.get(id(parent.value), {}).get(key, parent.pos)
        return Node(value, path if path is not None else parent.field_path(key), pos)

    def index(self, parent: Node, i: int) -> Node:
        pos = self.positions.get(id(parent.value), {}).get(i, parent.pos)
        return Node(parent.value[i], f"{parent.path}[{i}]", pos)


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


def expected(c: Checker, node: Node, what: str) -> None:
    """Report that `node` is not `what` ("a string", "a mapping"...)."""
    number_for_text = (
        what == "a string"
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )
    hint = " (quote it)" if number_for_text else ""
    c.error(node, f"expected {what}, got {describe_value(node.value)}{hint}")


class Schema:
    def check(self, c: Checker, node: Node) -> bool:
        """Report every problem of `node`; True if there was none."""
        before = c.error_count
        self.walk(c, node)
        return c.error_count == before

    def walk(self, c: Checker, node: Node) -> None:
        raise NotImplementedError


class AnyValue(Schema):
    """Anything (fields we store but neither read nor check)."""

    def walk(self, c: Checker, node: Node) -> None:
        return


@dataclass(frozen=True)
class Str(Schema):
    choices: tuple[str, ...] = ()
    checks: tuple[StrCheck, ...] = ()

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, str):
            expected(c, node, "a string")
            return
        if self.choices and node.value not in self.choices:
            c.error(node, f"{node.value!r} is not one of {', '.join(self.choices)}")
            return
        for check in self.checks:
            problem = check(node.value)
            if problem:
                c.error(node, problem)
                return


@dataclass(frozen=True)
class Int(Schema):
    low: int | None = None
    high: int | None = None
    what: str = "value"

    def walk(self, c: Checker, node: Node) -> None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            expected(c, node, "an integer")
            return
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            c.error(node, f"{self.what} {value} out of range {self.low}-{self.high}")


class Bool(Schema):
    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, bool):
            expected(c, node, "a boolean")


class Number(Schema):
    def walk(self, c: Checker, node: Node) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            expected(c, node, "a number")


@dataclass(frozen=True)
class IntOrStr(Schema):
    as_int: Schema
    as_str: Schema

    def walk(self, c: Checker, node: Node) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | str):
            expected(c, node, "an integer or a string")
        elif isinstance(node.value, int):
            self.as_int.walk(c, node)
        else:
            self.as_str.walk(c, node)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    min_items: int = 0
    # a function of a well-formed item giving the value that must be unique (None: not
    # compared), and what to call that value
    unique_by: Callable[[Any], object] | None = None
    unique_what: str = "entry"

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, list):
            expected(c, node, "a list")
            return
        if len(node.value) < self.min_items:
            c.error(node, f"at least {self.min_items} entries are required")
        seen: dict[object, int] = {}
        for i in range(len(node.value)):
            item = c.index(node, i)
            if self.item.check(c, item) and self.unique_by is not None:
                key = self.unique_by(item.value)
                if key is None:
                    continue
                if key in seen:
                    c.error(item, f"duplicate {self.unique_what} {key!r} (same as [{seen[key]}])")
                else:
                    seen[key] = i


@dataclass(frozen=True)
class MapOf(Schema):
    value: Schema
    key: Callable[[object], str | None] | None = None

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, dict):
            expected(c, node, "a mapping")
            return
        for key in node.value:
            child = c.child(node, key)
            if self.key is not None:
                problem = self.key(key)
                if problem:
                    c.error(child, problem)
                    continue
            self.value.walk(c, child)


# Hooks run on an object whose fields are all well-formed: (checker, the object, its fields).
Hook = Callable[[Checker, Node, Mapping[str, Node]], None]


@dataclass(frozen=True)
class Obj(Schema):
    fields: Mapping[str, Schema]
    required: tuple[str, ...] = ()
    hooks: tuple[Hook, ...] = ()
    # unknown fields are accepted and left unchecked (objects we only partly describe)
    open: bool = False
    # what to tell someone who writes one of these unknown fields
    hints: Mapping[str, str] = field(default_factory=dict)
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(self.fields))

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, dict):
            expected(c, node, "a mapping")
            return
        fields: dict[str, Node] = {}
        ok = True
        for key in node.value:
            child = c.child(node, key)
            schema = self.fields.get(key) if isinstance(key, str) else None
            if schema is None:
                if self.open or not c.strict:
                    continue
                c.error(child, self._unknown_field(key))
                ok = False
                continue
            if child.value is None and key not in self.required:
                # `field:` with no value is null, which Kubernetes and serde treat as absent.
                continue
            ok = schema.check(c, child) and ok
            fields[key] = child
        for key in self.required:
            if key not in fields and (key not in node.value or node.value[key] is None):
                c.error(node.missing(key), "required field is missing")
                ok = False
        if ok:
            for hook in self.hooks:
                hook(c, node, fields)

    def _unknown_field(self, key: object) -> str:
        text = key if isinstance(key, str) else repr(key)
        hint = self.hints.get(text)
        if hint:
            return f"unknown field {text!r}: {hint}"
        close = difflib.get_close_matches(text, sorted(self.names), n=1)
        if close:
            return f"unknown field {text!r} (did you mean {close[0]!r}?)"
        if len(self.names) <= _LISTED_FIELDS:
            return f"unknown field {text!r} (expected one of: {', '.join(sorted(self.names))})"
        return f"unknown field {text!r}"


def obj(
    fields: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    hooks: Sequence[Hook] = (),
    open: bool = False,
    hints: Mapping[str, str] | None = None,
) -> Obj:
    return Obj(dict(fields), tuple(required), tuple(hooks), open, dict(hints or {}))


def strings(*checks: StrCheck, min_items: int = 0) -> ListOf:
    return ListOf(Str(checks=checks), min_items)


ANY = AnyValue()
STR = Str()
INT = Int()
BOOL = Bool()

# --- value checks ------------------------------------------------------------------------------

_FQDN = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$"
)


def ip_address(text: str) -> str | None:
    if "%" in text:
        return f"{text!r} is not an IP address (zone indexes are not supported)"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f"{text!r} is not an IP address"
    return None


def cidr(text: str) -> str | None:
    """An IP or a CIDR (`10.0.0.0/8`); host bits may be set, as Istio allows."""
    if "%" in text:
        return f"{text!r} is not a CIDR or IP address"
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{text!r} is not a CIDR or IP address"
    return None


def hostname(text: str) -> str | None:
    """A DNS name, optionally starting with `*.` (Istio hosts)."""
    if text == "*" or (len(text) <= 253 and _FQDN.match(text)):
        return None
    return f"{text!r} is not a valid host name"


def port_string(text: str, low: int = 1) -> str | None:
    """A port number written as a string (AuthorizationPolicy `ports`, a JSON map key)."""
    # The length bound keeps int() cheap (and below Python's limit on digits it converts).
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not low <= int(text) <= 65535:
        return f"{text!r} is not a port number ({low}-65535, as a string)"
    return None


def port_key(key: object) -> str | None:
    """A port as a map key: 8080 in YAML, "8080" in JSON."""
    if isinstance(key, bool):
        return f"port {key!r} must be a number"
    if isinstance(key, int):
        return None if 1 <= key <= 65535 else f"port {key} out of range 1-65535"
    if isinstance(key, str):
        return port_string(key)
    return f"port {key!r} must be a number"


PORT = Int(1, 65535, "port")
