"""Arguments of `ztunnel-py testbed` and `ztunnel-py demo`."""

from __future__ import annotations

import argparse


def add_testbed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="zt-")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true")
