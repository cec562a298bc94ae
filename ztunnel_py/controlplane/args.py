"""Arguments of `ztunnel-py controlplane` (owned by the control plane; filled in by its author)."""

from __future__ import annotations

import argparse


def add_controlplane_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default="/var/lib/ztunnel-py/controlplane")
