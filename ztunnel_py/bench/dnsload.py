"""The DNS load generator of `ztunnel-py bench dns`: queries per second and latency.

Run inside a pod (`ip netns exec POD python -m ztunnel_py.bench.dnsload --server IP --name
NAME ...`); prints one JSON object on stdout. `--concurrency` workers, each with its own UDP
socket, send A queries for `--name` to `--server`:53 one after the other (closed loop: the next
query leaves when the answer to the previous one arrived), until `--queries` were sent in all.
A query unanswered within `--timeout` counts as a failure and is not retried. Latency runs from
the send to the answer; percentiles are nearest-rank values of the sorted sample. Bounded: the
query count, the per-query timeout and a hard `--deadline` for the whole run.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import time
from dataclasses import asdict, dataclass

import dns.message
import dns.rcode
import trio


@dataclass(frozen=True, slots=True)
class DnsLoadResult:
    queries: int
    failures: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def run(
    server: str, name: str, queries: int, concurrency: int, per_query: float, deadline: float
) -> DnsLoadResult:
    latencies: list[float] = []
    failures = 0
    remaining = queries
    family = socket.AF_INET6 if ":" in server else socket.AF_INET

    async def worker() -> None:
        nonlocal remaining, failures
        with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
            await sock.connect((server, 53))
            while remaining > 0:
                remaining -= 1
                query = dns.message.make_query(name, "A")
                started = time.perf_counter()
                answered = False
                with trio.move_on_after(per_query):
                    await sock.send(query.to_wire())
                    while True:
                        response = dns.message.from_wire(await sock.recv(65535))
                        if response.id == query.id:
                            answered = response.rcode() == dns.rcode.NOERROR
                            break
                if answered:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

    began = time.perf_counter()
    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    seconds = time.perf_counter() - began
    done = sorted(latencies)
    return DnsLoadResult(
        queries=len(done) + failures,
        failures=failures,
        seconds=seconds,
        qps=len(done) / seconds if seconds > 0 else 0.0,
        p50_ms=percentile(done, 50) * 1000,
        p99_ms=percentile(done, 99) * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ztunnel_py.bench.dnsload")
    parser.add_argument("--server", required=True, help="the resolver's IP (port 53)")
    parser.add_argument("--name", required=True, help="the name asked (type A)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=2.0, help="per query, seconds")
    parser.add_argument("--deadline", type=float, default=60.0, help="whole run, seconds")
    args = parser.parse_args()
    result = trio.run(
        run, args.server, args.name, args.queries, args.concurrency, args.timeout, args.deadline
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
