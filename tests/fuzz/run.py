"""Run one fuzz target under atheris: `python -m tests.fuzz.run TARGET [libFuzzer options]
[CORPUS_DIR...]`.

ztunnel_py and the protocol libraries it parses with (h11, h2, hpack, yaml, protobuf's pure
Python parts) are instrumented for coverage as they are imported. libFuzzer's options and
corpus directories follow the target name, e.g. `-max_total_time=60 -print_final_stats=1
new-inputs/ tests/fuzz/corpus/xds/` (new interesting inputs go to the first directory).
A crash writes the input to `<-artifact_prefix>crash-<sha1>` and exits non-zero.
"""

from __future__ import annotations

import sys

import atheris

INSTRUMENTED = ["ztunnel_py", "h11", "h2", "hpack", "hyperframe", "yaml"]


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS...]")
    name = sys.argv[1]
    with atheris.instrument_imports(include=INSTRUMENTED):
        from tests.fuzz.targets import TARGETS
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; one of: {', '.join(TARGETS)}")
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
