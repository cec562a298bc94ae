"""The proxy processes' collector settings (`runtime.proxy.tune_gc`), checked in a fresh
interpreter so the test process keeps its own."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json, weakref
from ztunnel_py.runtime.proxy import GC_THRESHOLDS, tune_gc

class Node:
    pass

startup = [Node() for _ in range(1000)]
tune_gc()
frozen = gc.get_freeze_count()

# a reference cycle made after start-up must still be collected, by the collector's own
# schedule (no explicit gc.collect): allocate past the young generation's threshold
a, b = Node(), Node()
a.other, b.other = b, a
gone = weakref.ref(a)
del a, b
keep = [[] for _ in range(3 * GC_THRESHOLDS[0])]
print(json.dumps({
    "threshold": gc.get_threshold(),
    "expected": GC_THRESHOLDS,
    "enabled": gc.isenabled(),
    "frozen": frozen,
    "startup_objects": len(startup),
    "cycle_collected": gone() is None,
}))
"""


def test_tuning_freezes_startup_raises_the_threshold_and_still_collects_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(out.stdout)
    assert seen["threshold"] == seen["expected"]
    assert seen["threshold"][0] > 700  # CPython's default young threshold
    assert seen["enabled"]
    # start-up objects (modules, the 1000 nodes above) are out of the collector's scans
    assert seen["frozen"] >= seen["startup_objects"]
    assert seen["cycle_collected"]
