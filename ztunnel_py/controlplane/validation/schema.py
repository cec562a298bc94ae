"""A small schema language for Kubernetes-style documents, written as Python data.

Each schema checks one value and reports every problem it finds (not just the first) through a
`Checker`, with the value's field path (`spec.ports[0].targetPort`) and, for YAML files, its
line and column. Objects know their fields: an unknown field is an error in strict mode (files)
and ignored otherwise (objects from a Kubernetes API server, possibly newer than our tables).
Semantic checks that need several fields run as `Obj` hooks, only when the object's own fields
are well-formed, so a hook can trust the shapes it reads.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.controlplane.resources import Diagnostic, Origin, Positions, Severity
from ztunnel_py.yamlpos import describe_value

# A value check: returns the reason the value is wrong, or None.
StrCheck = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Node:
    """A value inside a document, with its field path and position."""

    value: Any
    path: str
    pos: tuple[int, int] | None = None

    def field_path(self, key: object) -> str:
        if isinstance(key, str) and _PLAIN_KEY.match(key):
            return f"{self.path}.{key}" if self.path else key
        label = f'"{key}"' if isinstance(key, str) else repr(key)
        return f"{self.path}[{label}]"


_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


class Checker:
    """Collects the diagnostics of one document."""

    def __init__(self, origin: Origin, positions: Positions, strict: bool) -> None:
        self.origin = origin
        self.positions = positions
        self.strict = strict
        self.diagnostics: list[Diagnostic] = []
        self.error_count = 0

    def error(self, node: Node, reason: str) -> None:
        self._add(node, reason, Severity.ERROR)
        self.error_count += 1

    def warn(self, node: Node, reason: str) -> None:
        self._add(node, reason, Severity.WARNING)

    def _add(self, node: Node, reason: str, severity: Severity) -> None:
        line, column = node.pos if node.pos is not None else (None, None)
        self.diagnostics.append(Diagnostic(self.origin, node.path, reason, severity, line, column))

    def child(self, parent: Node, key: object, path: str | None = None) -> Node:
        value = parent.value[key]
        pos = self.positions.get(id(parent.value), {}).get(key, parent.pos)
        return Node(value, path if path is not None else parent.field_path(key), pos)

    def index(self, parent: Node, i: int) -> Node:
        pos = self.positions.get(id(parent.value), {}).get(i, parent.pos)
        return Node(parent.value[i], f"{parent.path}[{i}]", pos)


def _expected(c: Checker, node: Node, what: str) -> None:
    hint = ""
    if isinstance(node.value, bool) and what == "a string":
        hint = " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
    elif isinstance(node.value, int | float) and what == "a string":
        hint = " (quote it)"
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
            _expected(c, node, "a string")
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
            _expected(c, node, "an integer")
            return
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            c.error(node, f"{self.what} {value} out of range {self.low}-{self.high}")


PORT = Int(1, 65535, "port")


class Bool(Schema):
    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, bool):
            _expected(c, node, "a boolean")


class Number(Schema):
    def walk(self, c: Checker, node: Node) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            _expected(c, node, "a number")


@dataclass(frozen=True)
class IntOrStr(Schema):
    as_int: Schema
    as_str: Schema

    def walk(self, c: Checker, node: Node) -> None:
        if isinstance(node.value, bool) or not isinstance(node.value, int | str):
            _expected(c, node, "an integer or a string")
        elif isinstance(node.value, int):
            self.as_int.walk(c, node)
        else:
            self.as_str.walk(c, node)


@dataclass(frozen=True)
class ListOf(Schema):
    item: Schema
    min_items: int = 0
    # a function of the item giving the value that must be unique, and what to call it
    unique_by: Callable[[Any], object] | None = None
    unique_what: str = "entry"

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, list):
            _expected(c, node, "a list")
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
                    c.error(item, f"duplicate {self.unique_what} (same as [{seen[key]}])")
                else:
                    seen[key] = i


@dataclass(frozen=True)
class MapOf(Schema):
    value: Schema
    key: Callable[[object], str | None] | None = None

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, dict):
            _expected(c, node, "a mapping")
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
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(self.fields))

    def walk(self, c: Checker, node: Node) -> None:
        if not isinstance(node.value, dict):
            _expected(c, node, "a mapping")
            return
        fields: dict[str, Node] = {}
        ok = True
        for key in node.value:
            child = c.child(node, key)
            schema = self.fields.get(key) if isinstance(key, str) else None
            if schema is None:
                if self.open or not c.strict:
                    continue
                c.error(child, _unknown_field(key, self.names))
                ok = False
                continue
            if child.value is None and key not in self.required:
                # `field:` with no value is null, which Kubernetes treats as absent.
                continue
            ok = schema.check(c, child) and ok
            fields[key] = child
        for key in self.required:
            if key not in fields and (key not in node.value or node.value[key] is None):
                c.error(Node(None, node.field_path(key), node.pos), "required field is missing")
                ok = False
        if ok:
            for hook in self.hooks:
                hook(c, node, fields)


def _unknown_field(key: object, names: frozenset[str]) -> str:
    text = key if isinstance(key, str) else repr(key)
    close = difflib.get_close_matches(str(text), sorted(names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {text!r}{hint}"


def obj(
    fields: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    hooks: Sequence[Hook] = (),
    open: bool = False,
) -> Obj:
    return Obj(dict(fields), tuple(required), tuple(hooks), open)


def strings(*checks: StrCheck, min_items: int = 0) -> ListOf:
    return ListOf(Str(checks=checks), min_items)


# --- value checks ------------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")
_FQDN = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$"
)


def dns1123_label(text: str) -> str | None:
    if len(text) > 63 or not _DNS1123_LABEL.match(text):
        return (
            f"{text!r} is not a valid name: at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1123_subdomain(text: str) -> str | None:
    if len(text) > 253 or not _DNS1123_SUBDOMAIN.match(text):
        return (
            f"{text!r} is not a valid name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters"
        )
    return None


def dns1035_label(text: str) -> str | None:
    if len(text) > 63 or not _DNS1035_LABEL.match(text):
        return (
            f"{text!r} is not a valid name: at most 63 lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def label_key(key: object) -> str | None:
    """A qualified name: `[prefix/]name` (Kubernetes label and annotation keys)."""
    if not isinstance(key, str):
        return f"label key {key!r} must be a string"
    if not key:
        return "label key must not be empty: an empty key can never match"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain(prefix)):
        return f"invalid label key {key!r}: the prefix must be a DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"invalid label key {key!r}: the name part must be 1-63 characters of letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def label_value(text: str) -> str | None:
    if text and (len(text) > 63 or not _LABEL_NAME.match(text)):
        return (
            f"invalid label value {text!r}: at most 63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def port_name(text: str) -> str | None:
    """IANA_SVC_NAME, as Kubernetes requires for container port names and named targetPorts."""
    if (
        not 1 <= len(text) <= 15
        or not _IANA_SVC_NAME.match(text)
        or not any(ch.isalpha() for ch in text)
        or text.startswith("-")
        or text.endswith("-")
        or "--" in text
    ):
        return (
            f"invalid port name {text!r}: 1-15 lowercase letters, digits and '-', with at least "
            "one letter, no '-' at either end and no '--'"
        )
    return None


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


def port_string(text: str) -> str | None:
    """A port number written as a string (AuthorizationPolicy `ports`, `destination.port`)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        return f"{text!r} is not a port number (1-65535, as a string)"
    return None


LABELS = MapOf(Str(checks=(label_value,)), key=label_key)
