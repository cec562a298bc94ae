"""Run fuzz targets under atheris.

`python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS_DIR...]` runs one target.
ztunnel_py and the protocol libraries it parses with (h11, h2, hpack, yaml, protobuf's pure
Python parts) are instrumented for coverage as they are imported. libFuzzer's options and
corpus directories follow the target name, e.g. `-max_total_time=60 -print_final_stats=1
new-inputs/ tests/fuzz/corpus/xds/` (new interesting inputs go to the first directory).
A crash writes the input to `<-artifact_prefix>crash-<sha1>` and exits non-zero.

`python -m tests.fuzz.run --each WORK LIMIT TARGET... -- [libFuzzer options]` runs several
targets one after another, each in its own process forked after the instrumented import
(instrumenting takes several seconds, fuzzing a target in CI three): a crash or a hang still
ends only that target's run. Target T reads tests/fuzz/corpus/T and keeps new inputs in
WORK/T/new/, crashes (any libFuzzer artifact) in WORK/T/, its output in WORK/T.log and its exit
status in WORK/T.status (`killed` when it ran past LIMIT seconds).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

import atheris

INSTRUMENTED = ["ztunnel_py", "h11", "h2", "hpack", "hyperframe", "yaml"]
CORPUS = Path(__file__).parent / "corpus"


def fuzz(name: str, options: list[str]) -> NoReturn:
    """libFuzzer runs the target until a limit or a crash, then ends the process."""
    from tests.fuzz.targets import TARGETS

    atheris.Setup([sys.argv[0], *options], TARGETS[name])
    atheris.Fuzz()
    raise AssertionError("atheris.Fuzz() returned")


def run_child(name: str, work: Path, limit: float, options: list[str]) -> str:
    """Fuzz `name` in a forked process; its exit status, or `killed` past `limit` seconds."""
    artifacts = work / name
    (artifacts / "new").mkdir(parents=True, exist_ok=True)
    argv = [*options, f"-artifact_prefix={artifacts}/", str(artifacts / "new"), str(CORPUS / name)]
    log = os.open(work / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            fuzz(name, argv)
        finally:
            os._exit(70)
    os.close(log)
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return str(os.waitstatus_to_exitcode(status))
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed"
        time.sleep(0.1)


def main() -> None:
    usage = (
        "usage: python -m tests.fuzz.run TARGET [libFuzzer options] [CORPUS...]\n"
        "   or: python -m tests.fuzz.run --each WORK LIMIT TARGET... -- [libFuzzer options]"
    )
    if len(sys.argv) < 2:
        sys.exit(usage)
    each = sys.argv[1] == "--each"
    if each:
        if "--" not in sys.argv or sys.argv.index("--") < 5:
            sys.exit(usage)
        split = sys.argv.index("--")
        work, limit, names = Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4:split]
        options = sys.argv[split + 1 :]
    else:
        names, options = sys.argv[1:2], sys.argv[2:]
    with atheris.instrument_imports(include=INSTRUMENTED):
        from tests.fuzz.targets import TARGETS
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        sys.exit(f"unknown target {unknown[0]!r}; one of: {', '.join(TARGETS)}")
    if not each:
        fuzz(names[0], options)
    for name in names:
        (work / f"{name}.status").write_text(run_child(name, work, limit, options))


if __name__ == "__main__":
    main()
