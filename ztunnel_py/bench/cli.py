"""`ztunnel-py bench` entry point: dispatches to one benchmark."""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    from ztunnel_py.bench.throughput import main as throughput_main

    if args.bench_command == "throughput":
        return throughput_main(args)
    raise AssertionError(f"unknown benchmark {args.bench_command}")
