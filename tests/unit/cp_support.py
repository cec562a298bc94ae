"""Helpers for the control plane configuration tests: YAML text in, store or translation out."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ztunnel_py.controlplane.resources import Diagnostic
from ztunnel_py.controlplane.sources.files import load_directory
from ztunnel_py.controlplane.sources.yamldocs import parse_documents
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions, Translation, translate
from ztunnel_py.controlplane.validation import validate_document
from ztunnel_py.model import Service, Workload


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def diagnostics(text: str, source: str = "f.yaml", strict: bool = True) -> list[Diagnostic]:
    """Every diagnostic (syntax and validation) of one file's text."""
    parsed = parse_documents(yaml_text(text), source)
    out = [parsed.error] if parsed.error is not None else []
    for doc in parsed.documents:
        if not strict:
            from dataclasses import replace

            doc = replace(doc, strict=False)
        for outcome in validate_document(doc):
            out.extend(outcome.diagnostics)
    return out


def store_with(*files: tuple[str, str], options: MeshOptions | None = None) -> ConfigStore:
    store = ConfigStore(options, report=False)
    store.apply({name: parse_documents(yaml_text(text), name) for name, text in files})
    return store


def translated(text: str, options: MeshOptions | None = None) -> Translation:
    """The translation of one file's resources; fails the test on any validation error."""
    store = store_with(("f.yaml", text), options=options)
    errors = [str(d) for d in store.diagnostics() if d.is_error]
    assert not errors, errors
    return translate(store.resources().values(), options)


def translate_directory(directory: Path) -> tuple[dict[str, Workload], dict[str, Service]]:
    """Workloads by uid and services by key, as the control plane serves a watched directory."""
    store = ConfigStore(MeshOptions(), report=False)
    snapshot = store.apply(dict(load_directory(directory))).snapshot
    return dict(snapshot.workloads), dict(snapshot.services)
