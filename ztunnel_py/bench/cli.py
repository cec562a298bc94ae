"""`ztunnel-py bench` entry point: dispatches to one benchmark."""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    if args.bench_command == "throughput":
        from ztunnel_py.bench.throughput import main as throughput_main

        return throughput_main(args)
    if args.bench_command == "xds":
        from ztunnel_py.bench.xds import main as xds_main

        return xds_main(args)
    if args.bench_command == "policy":
        from ztunnel_py.bench.policy import main as policy_main

        return policy_main(args)
    if args.bench_command == "dns":
        from ztunnel_py.bench.dns import main as dns_main

        return dns_main(args)
    if args.bench_command == "compare":
        from ztunnel_py.bench.compare import main as compare_main

        return compare_main(args)
    if args.bench_command == "soak":
        from ztunnel_py.bench.soak import main as soak_main

        return soak_main(args)
    if args.bench_command == "enroll":
        from ztunnel_py.bench.enroll import main as enroll_main

        return enroll_main(args)
    raise AssertionError(f"unknown benchmark {args.bench_command}")
