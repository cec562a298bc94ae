"""`ztunnel-py controlplane validate DIR`: the configuration pipeline offline, for CI and GitOps.

Loads every YAML file below DIR as `controlplane run --config-dir DIR` would (same parser,
validation, conflict rules and translation), prints one line per problem on stdout
(`file:doc[index]: field.path: reason`, warnings marked `warning:`), a summary on stderr, and
exits 1 if there is any error, 0 otherwise (warnings alone do not fail).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from ztunnel_py.controlplane.sources.files import load_directory
from ztunnel_py.controlplane.sources.yamldocs import Parsed
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions


def validate_directory(directory: Path, options: MeshOptions, out: TextIO, err: TextIO) -> int:
    if not directory.is_dir():
        print(f"ztunnel-py controlplane validate: {directory}: not a directory", file=err)
        return 1
    files = load_directory(directory)
    # A running control plane ignores a file with a syntax error (keeping what it served);
    # here the documents before the error are checked too, so one run reports everything.
    syntax = tuple(parsed.error for parsed in files.values() if parsed.error is not None)
    store = ConfigStore(options, report=False)
    snapshot = store.apply({path: Parsed(p.documents) for path, p in files.items()}).snapshot
    diagnostics = sorted(
        store.diagnostics() + syntax,
        key=lambda d: (d.origin, d.line or 0, d.column or 0, d.path),
    )
    for d in diagnostics:
        print(d, file=out)
    errors = sum(1 for d in diagnostics if d.is_error)
    warnings = len(diagnostics) - errors
    print(
        f"{len(files)} files, {len(store.resources())} resources accepted "
        f"({len(snapshot.workloads)} workloads, {len(snapshot.services)} services, "
        f"{len(snapshot.policies)} policies, {len(snapshot.waypoints)} waypoints, "
        f"{len(snapshot.http_services)} HTTP services): {errors} errors, {warnings} warnings",
        file=err,
    )
    return 1 if errors else 0


def main(args: argparse.Namespace) -> int:
    options = MeshOptions(trust_domain=args.trust_domain, root_namespace=args.root_namespace)
    return validate_directory(Path(args.directory), options, sys.stdout, sys.stderr)
