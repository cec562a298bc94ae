"""`ztunnel-py controlplane validate DIR`: the configuration pipeline offline, for CI and GitOps.

Loads every YAML file below DIR as `controlplane run --config-dir DIR` would (same parser,
validation, conflict rules and translation), prints one line per problem on stdout
(`file:doc[index]: field.path: reason`, warnings marked `warning:`, documents of kinds the
control plane does not use marked `note: skipped`), a summary on stderr, and exits 1 if there is
any error, 0 otherwise (warnings and notes alone do not fail). `--output json` prints the
diagnostics as one JSON list instead, for tools (`testbed apply` reads it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from ztunnel_py.controlplane.resources import Diagnostic
from ztunnel_py.controlplane.sources.files import load_directory
from ztunnel_py.controlplane.sources.yamldocs import Parsed
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions
from ztunnel_py.yamlschema.problems import Severity


def diagnostic_json(d: Diagnostic) -> dict[str, object]:
    return {
        "file": d.origin.source,
        "document": d.origin.index,
        "path": d.path,
        "severity": d.severity.value,
        "reason": d.reason,
        "line": d.line,
        "column": d.column,
    }


def validate_directory(
    directory: Path, options: MeshOptions, out: TextIO, err: TextIO, output: str = "text"
) -> int:
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
    if output == "json":
        print(json.dumps([diagnostic_json(d) for d in diagnostics], indent=1), file=out)
    else:
        for d in diagnostics:
            print(d, file=out)
    errors = sum(1 for d in diagnostics if d.is_error)
    warnings = sum(1 for d in diagnostics if d.severity is Severity.WARNING)
    skipped = len(diagnostics) - errors - warnings
    print(
        f"{len(files)} files, {len(store.resources())} resources accepted "
        f"({len(snapshot.workloads)} workloads, {len(snapshot.services)} services, "
        f"{len(snapshot.policies)} policies, {len(snapshot.waypoints)} waypoints, "
        f"{len(snapshot.http_services)} HTTP services): {errors} errors, {warnings} warnings"
        + (f", {skipped} skipped (kinds not used)" if skipped else ""),
        file=err,
    )
    return 1 if errors else 0


def main(args: argparse.Namespace) -> int:
    options = MeshOptions(trust_domain=args.trust_domain, root_namespace=args.root_namespace)
    return validate_directory(Path(args.directory), options, sys.stdout, sys.stderr, args.output)
