"""Load balancing over one cluster's endpoints, as Envoy's load balancers do it: sans-IO.

A balancer picks among the endpoints it is given (the cluster has already left out ejected
ones and, where others remain, the ones a retry already tried), each an address and a weight:

- `LeastRequest` (Istio's default, and LEAST_CONN): with equal weights, the better of two
  random picks by requests in flight (Envoy's power of two choices); with unequal weights, a
  random pick weighted by weight / (requests in flight + 1);
- `RoundRobin`: smooth weighted round robin (each endpoint its share, interleaved; the first
  of equals first);
- `Random`: a random pick weighted by weight;
- `HashBalancer`: a consistent hash of the request (`request_hash`) looked up in a `HashRing`
  (Envoy's ring hash, Ketama: `ceil(min_ring_size * lowest share) / lowest share` entries
  shared by weight, each endpoint's entries the hashes of `address_0`, `address_1`...) or a
  `MaglevTable` (Maglev's lookup table, Envoy's weighted fill). Keys follow their endpoint when
  unrelated endpoints come and go, unlike a modulo. A retry walks the ring past the endpoints
  it must avoid (the table is probed again with a derived key). A request without its key
  is balanced at random.

Hashes are 64-bit BLAKE2b of the text (Envoy uses xxHash64; any stable 64-bit hash does, and
it must be stable across processes: Python's `hash` is salted per process).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from ztunnel_py.http.message import RequestHead
from ztunnel_py.model.http import (
    MAX_RING_SIZE,
    ConsistentHash,
    HashSource,
    HashTable,
    LoadBalancer,
    LoadBalancerKind,
)

__all__ = [
    "Balancer",
    "Endpoint",
    "HashBalancer",
    "HashRing",
    "LeastRequest",
    "MaglevTable",
    "Pick",
    "Random",
    "RoundRobin",
    "balancer_for",
    "hash64",
    "request_hash",
]

# How many derived keys a Maglev lookup probes before it takes any allowed endpoint.
_MAGLEV_PROBES = 16


def hash64(text: str, seed: int = 0) -> int:
    """A stable 64-bit hash of `text` (seeded variants for Maglev's two permutation hashes)."""
    digest = hashlib.blake2b(
        text.encode(), digest_size=8, salt=seed.to_bytes(16, "little")
    ).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint as the balancers see it."""

    address: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Pick:
    """What one pick goes by: requests in flight by address, the request's hash (None: it has
    none), and addresses to skip where possible (only hash balancers are given any: the others
    are offered the allowed endpoints alone)."""

    active: Mapping[str, int] = field(default_factory=dict)
    key: int | None = None
    avoid: frozenset[str] = frozenset()


class Balancer:
    """Picks one of `endpoints` (never empty)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, endpoints: Sequence[Endpoint], how: Pick) -> Endpoint:
        raise NotImplementedError


class Random(Balancer):
    def pick(self, endpoints: Sequence[Endpoint], how: Pick) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        return self.rng.choices(endpoints, weights=[e.weight for e in endpoints])[0]


class LeastRequest(Balancer):
    def pick(self, endpoints: Sequence[Endpoint], how: Pick) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        if len({e.weight for e in endpoints}) == 1:
            # two different endpoints, each pair as likely as `rng.sample` draws them (two
            # `randrange`s cost a fraction of a `sample`)
            n = len(endpoints)
            first = self.rng.randrange(n)
            second = self.rng.randrange(n - 1)
            if second >= first:
                second += 1
            a, b = endpoints[first], endpoints[second]
            return b if how.active.get(b.address, 0) < how.active.get(a.address, 0) else a
        weights = [e.weight / (how.active.get(e.address, 0) + 1) for e in endpoints]
        return self.rng.choices(endpoints, weights=weights)[0]


class RoundRobin(Balancer):
    """Smooth weighted round robin: every pick adds each endpoint's weight to its credit and
    takes the endpoint with the most, which then pays the total; over any window of total
    weight picks each endpoint gets exactly its weight, spread out."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._credit: dict[str, int] = {}

    def pick(self, endpoints: Sequence[Endpoint], how: Pick) -> Endpoint:
        # only the endpoints offered now keep their credit: one that was left out (ejected,
        # tried) comes back even, not behind
        old = self._credit
        credit = self._credit = {e.address: old.get(e.address, 0) + e.weight for e in endpoints}
        best = max(endpoints, key=lambda e: credit[e.address])
        credit[best.address] -= sum(e.weight for e in endpoints)
        return best


class HashRing:
    """Envoy's ring hash over `(address, weight)` pairs, built once per endpoint set."""

    def __init__(self, hosts: Sequence[tuple[str, int]], min_size: int) -> None:
        hosts = sorted(hosts)
        total = sum(w for _, w in hosts)
        lowest = min(w for _, w in hosts) / total
        scale = min(math.ceil(lowest * min_size) / lowest, MAX_RING_SIZE)
        points: list[tuple[int, str]] = []
        target = 0.0
        for address, weight in hosts:
            target += scale * weight / total
            i = 0
            while len(points) < target:
                points.append((hash64(f"{address}_{i}"), address))
                i += 1
        points.sort()
        self.hashes = [h for h, _ in points]
        self.addresses = [a for _, a in points]
        self.hosts = len(hosts)

    def lookup(self, key: int, avoid: frozenset[str] = frozenset()) -> str:
        """The first entry at or after `key` (wrapping around) whose endpoint is not in
        `avoid`; the entry at `key` itself when every endpoint is to be avoided."""
        size = len(self.hashes)
        start = bisect.bisect_left(self.hashes, key) % size
        if not avoid:
            return self.addresses[start]
        seen: set[str] = set()
        for step in range(size):
            address = self.addresses[(start + step) % size]
            if address not in avoid:
                return address
            seen.add(address)
            if len(seen) == self.hosts:
                break
        return self.addresses[start]


class MaglevTable:
    """Maglev's lookup table (Eisenbud et al.) with Envoy's weighted fill: each endpoint takes
    slots in the order of its own permutation (`offset`, `skip` from two hashes of its
    address) in turns, an endpoint of half the heaviest weight every other turn."""

    def __init__(self, hosts: Sequence[tuple[str, int]], size: int) -> None:
        hosts = sorted(hosts)
        heaviest = max(w for _, w in hosts)
        table: list[str | None] = [None] * size
        offsets = [hash64(a, 0) % size for a, _ in hosts]
        skips = [hash64(a, 1) % (size - 1) + 1 for a, _ in hosts]
        nexts = [0] * len(hosts)
        targets = [0.0] * len(hosts)
        filled, iteration = 0, 1
        while filled < size:
            for i, (address, weight) in enumerate(hosts):
                if filled == size:
                    break
                if iteration * weight < targets[i]:
                    continue
                targets[i] += heaviest
                slot = (offsets[i] + skips[i] * nexts[i]) % size
                while table[slot] is not None:
                    nexts[i] += 1
                    slot = (offsets[i] + skips[i] * nexts[i]) % size
                table[slot] = address
                nexts[i] += 1
                filled += 1
            iteration += 1
        self.table: list[str] = [a for a in table if a is not None]
        self.hosts = {a for a, _ in hosts}

    def lookup(self, key: int, avoid: frozenset[str] = frozenset()) -> str:
        size = len(self.table)
        address = self.table[key % size]
        if address not in avoid:
            return address
        for attempt in range(1, _MAGLEV_PROBES + 1):
            other = self.table[hash64(f"{key}:{attempt}") % size]
            if other not in avoid:
                return other
        allowed = sorted(self.hosts - avoid)
        return allowed[key % len(allowed)] if allowed else address


class HashBalancer(Balancer):
    """A ring or Maglev table over the endpoints, rebuilt only when they change."""

    def __init__(self, table: HashTable, size: int, rng: random.Random) -> None:
        super().__init__(rng)
        self.kind = table
        self.size = size
        self._built: tuple[frozenset[tuple[str, int]], HashRing | MaglevTable] | None = None

    def table(self, endpoints: Sequence[Endpoint]) -> HashRing | MaglevTable:
        hosts = frozenset((e.address, e.weight) for e in endpoints)
        if self._built is None or self._built[0] != hosts:
            built: HashRing | MaglevTable = (
                HashRing(list(hosts), self.size)
                if self.kind is HashTable.RING_HASH
                else MaglevTable(list(hosts), self.size)
            )
            self._built = (hosts, built)
        return self._built[1]

    def pick(self, endpoints: Sequence[Endpoint], how: Pick) -> Endpoint:
        allowed = [e for e in endpoints if e.address not in how.avoid] or list(endpoints)
        if how.key is None:
            return self.rng.choice(allowed)
        address = self.table(endpoints).lookup(how.key, how.avoid)
        return next(e for e in endpoints if e.address == address)


def balancer_for(lb: LoadBalancer, rng: random.Random) -> Balancer:
    ch = lb.consistent_hash
    if ch is not None:
        return HashBalancer(ch.table, ch.table_size, rng)
    if lb.kind is LoadBalancerKind.ROUND_ROBIN:
        return RoundRobin(rng)
    if lb.kind is LoadBalancerKind.RANDOM:
        return Random(rng)
    return LeastRequest(rng)


def _cookie(head: RequestHead, name: str) -> str | None:
    for header in head.headers.get_all("cookie"):
        for crumb in header.split(";"):
            key, sep, value = crumb.strip().partition("=")
            if sep and key == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


def request_hash(
    ch: ConsistentHash,
    head: RequestHead,
    source_ip: str,
    connection: Callable[[], str],
) -> tuple[int | None, str | None]:
    """The request's hash key for `ch` (None: it has none), and a `Set-Cookie` value when the
    cookie was missing and has a ttl: Envoy then makes the cookie from the connection's
    addresses (`connection()`), so a client's requests on one connection agree, and hashes it."""
    if ch.source is HashSource.HEADER:
        value = head.headers.joined(ch.name)
    elif ch.source is HashSource.SOURCE_IP:
        value = source_ip or None
    elif ch.source is HashSource.QUERY_PARAMETER:
        value = next(
            (v for k, v in parse_qsl(head.query, keep_blank_values=True) if k == ch.name), None
        )
    else:
        value = _cookie(head, ch.name)
        if value is None and ch.cookie_ttl is not None:
            value = format(hash64(connection()), "016x")
            cookie = f'{ch.name}="{value}"'
            if ch.cookie_ttl > 0:
                cookie += f"; Max-Age={int(ch.cookie_ttl)}"
            if ch.cookie_path:
                cookie += f"; Path={ch.cookie_path}"
            return hash64(value), cookie + "; HttpOnly"
    return (hash64(value) if value is not None else None), None
