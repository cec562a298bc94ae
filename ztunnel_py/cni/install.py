"""Chaining the plugin into a node's CNI configuration, without I/O: file names and JSON text
in, the files to write and remove out.

A node's container runtime reads the first configuration file of its network directory
(`/etc/cni/net.d`) in lexical order, `*.conflist` (a list of plugins run in order) or the older
single-plugin `*.conf`/`*.json`. The primary plugin (the one that creates pod interfaces) wrote
it; we append our entry to its plugin list, as istio-cni does, so we run after it with its
result as `prevResult`. A single-plugin file becomes a list (`NAME.conflist`, the old file
removed), since a chained plugin needs one. Installing again replaces our entry; uninstalling
removes it and leaves everything else as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PLUGIN_TYPE = "ztunnel-py-cni"
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


class InstallError(Exception):
    """A configuration file we cannot chain into; the text names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Change:
    """Write `text` to `write`; delete `remove` (a converted single-plugin file) if set."""

    write: str
    text: str
    remove: str | None = None


def primary_config(names: Iterable[str]) -> str | None:
    """The file the runtime uses: the first CNI configuration file name in lexical order."""
    candidates = sorted(n for n in names if n.endswith(CONFIG_SUFFIXES) and not n.startswith("."))
    return candidates[0] if candidates else None


def _load(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InstallError(f"{name} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InstallError(f"{name} is not a JSON object")
    return value


def _plugins(name: str, config: Mapping[str, Any]) -> list[Any]:
    plugins = config.get("plugins")
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise InstallError(f"{name}: 'plugins' must be a list of objects")
    return plugins


def _render(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


def chain(name: str, text: str, entry: Mapping[str, Any]) -> Change:
    """The configuration `name` (content `text`) with our `entry` last in its plugin list."""
    config = _load(name, text)
    ours = {**entry, "type": PLUGIN_TYPE}
    if "plugins" in config:
        plugins = [p for p in _plugins(name, config) if p.get("type") != PLUGIN_TYPE]
        return Change(name, _render({**config, "plugins": [*plugins, ours]}))
    if not isinstance(config.get("type"), str):
        raise InstallError(f"{name} has neither 'plugins' nor a plugin 'type'")
    # A single plugin: the list keeps its name and version, the plugin keeps everything else.
    primary = {k: v for k, v in config.items() if k not in ("cniVersion", "name")}
    converted = {
        "cniVersion": config.get("cniVersion", "1.0.0"),
        "name": config.get("name", "k8s-pod-network"),
        "plugins": [primary, ours],
    }
    stem = name.rsplit(".", 1)[0]
    return Change(f"{stem}.conflist", _render(converted), remove=name)


def unchain(name: str, text: str) -> Change | None:
    """The configuration without our entry, or None if it has none (nothing to write)."""
    config = _load(name, text)
    if "plugins" not in config:
        return None
    plugins = _plugins(name, config)
    kept = [p for p in plugins if p.get("type") != PLUGIN_TYPE]
    if len(kept) == len(plugins):
        return None
    return Change(name, _render({**config, "plugins": kept}))


def chained_entry(name: str, text: str) -> dict[str, Any] | None:
    """Our entry in configuration `name`, or None if we are not chained there (or it is not a
    plugin list)."""
    try:
        config = _load(name, text)
        plugins = _plugins(name, config) if "plugins" in config else []
    except InstallError:
        return None
    for plugin in plugins:
        if plugin.get("type") == PLUGIN_TYPE:
            return dict(plugin)
    return None
