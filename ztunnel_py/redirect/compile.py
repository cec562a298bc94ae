"""Compiling, loading and pinning the capture programs in a short-lived child process, or
reusing the ones pinned by a previous agent when they were built from the same inputs.

bcc compiles `bpf/redirect.c` with LLVM and clang inside the calling process, and those
libraries (about 85 MB of file pages) and the compile's heap (about 50 MB) stay in it. So the
agent never imports bcc: `compile_and_pin` runs this module in a new interpreter
(`python -m ztunnel_py.redirect.compile --pin-dir DIR [--bpf-dir DIR]`), which compiles the
programs, loads them (two SCHED_CLS, one SK_LOOKUP), pins the maps and the programs in DIR,
prints a report and exits; the agent then opens the pins through bpf(2) (`bpfsys`).

The C sources ship inside this package (`ztunnel_py/redirect/bpf/`, package data) and are found
with `importlib.resources`, so an installed ztunnel_py compiles them as a source checkout does.

- The maps are pinned by the C itself (BPF_TABLE_PINNED): an existing pin is reopened, so
  every pod's settings and counters survive an agent restart.
- A pinned program is kept when it is the same code (same program tag) on the same maps, so a
  restarted agent attaches the very programs already in use; other code is pinned in its
  place.
- Warm start: compiling takes 2-3 s of an agent's start, so `compile_or_reuse` skips it when
  the pin directory's build stamp (`build`, a symlink on the bpffs whose target is a line
  such as `format=1 source=… flags=… kernel=… bcc=…`) matches what this agent would compile:
  the digest of the C sources, of the compile flags and program and map layout, of the running
  kernel, and bcc's version. The stamp is removed before a compile and written after it, so it
  only ever describes complete pins. Reuse also checks that every program and map pin is there,
  of the right type, and that the programs use the very maps that are pinned; anything else
  (a changed source, flag, kernel or bcc, a missing or replaced pin) compiles as before, with
  a log line naming what differed.
- The report is one JSON object on stdout, `{"compile_seconds": 1.9, "programs": {"ingress":
  {"tag": "…", "reused": true}, "egress": {…}}}`, or `{"error": "…"}` with exit status 1.
  Everything bcc and clang print (diagnostics, the verifier log) goes to stderr, which the
  parent adds to the error it raises.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztunnel_py.model.ports import (
    DNS_PORT,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
    PACKET_MARK,
)
from ztunnel_py.redirect import bpfsys
from ztunnel_py.redirect.maps import (
    AddrKey,
    PodConfigStruct,
    PodCountersStruct,
    RedirectError,
)

MODULE = "ztunnel_py.redirect.compile"
# The directory holding this copy of the ztunnel_py package (a checkout or site-packages).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
MAPS = ("pods", "counters", "listeners", "reuse")  # pin names, as in BPF_TABLE_PINNED in the C
STAMP = "build"  # the build stamp's name in the pin directory
STAMP_FORMAT = "1"  # bump when the stamp's fields or their meaning change
COMPILE_TIMEOUT = 120.0
DIAGNOSTIC_LINES = 30

log = logging.getLogger("ztunnel_py.redirect")


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """A function of bpf/redirect.c and how it is loaded (bcc takes -1 for no attach type)."""

    func: str
    prog_type: int
    attach_type: int = -1


# pin name -> program; ingress and egress are the tc programs attached to each pod's
# interface, lookup is linked to each pod's netns
PROGRAMS = {
    "ingress": ProgramSpec("zt_ingress", bpfsys.BPF_PROG_TYPE_SCHED_CLS),
    "egress": ProgramSpec("zt_egress", bpfsys.BPF_PROG_TYPE_SCHED_CLS),
    "lookup": ProgramSpec("zt_lookup", bpfsys.BPF_PROG_TYPE_SK_LOOKUP, bpfsys.BPF_SK_LOOKUP),
}


@dataclass(frozen=True, slots=True)
class CompileReport:
    """What the child did: the compile time, each pinned program's tag, and which pins it
    kept because they held the same code."""

    compile_seconds: float
    tags: dict[str, str]
    reused: frozenset[str]
    compiled: bool = True


def packaged_sources() -> Path:
    """The directory of the C sources shipped in this package (redirect.c, redirect.h)."""
    sources = importlib.resources.files("ztunnel_py.redirect").joinpath("bpf")
    # bcc reads redirect.c's #include from a directory, so the sources must be files on disk,
    # as they are in a checkout and in any pip install (a zipped package would not do).
    if not isinstance(sources, Path) or not sources.is_dir():
        raise RedirectError(
            f"the BPF sources are not a directory on disk ({sources}): reinstall ztunnel_py "
            "with pip"
        )
    return sources


def check_cflag_path(path: Path) -> None:
    """`path` goes into a -D string macro: refuse what would end or escape the string."""
    if '"' in str(path) or "\\" in str(path):
        raise RedirectError(f"pin root {path} contains a quote or backslash")


# -- the parent's side --------------------------------------------------------------------

# Where bcc finds kernel headers: the build tree of the running kernel (a container mounts the
# node's /lib/modules and /usr/src, which it points into), else the kernel's own archive
# (CONFIG_IKHEADERS).
MODULES_DIR = Path("/lib/modules")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")


def missing_headers(release: str | None = None) -> str | None:
    """Why bcc will find no kernel headers, or None when it will."""
    release = release or os.uname().release
    build = MODULES_DIR / release / "build"
    if (build / "include").is_dir() or KHEADERS.exists():
        return None
    return (
        f"no kernel headers for kernel {release}: neither {build}/include nor {KHEADERS} "
        "exists. In a container, mount the node's /lib/modules and /usr/src read-only (the "
        "agent DaemonSet does) and install the headers package on the node (Debian: "
        "linux-headers-$(uname -r)); or use a kernel with CONFIG_IKHEADERS (`modprobe "
        "kheaders` on the node)"
    )


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _bcc_version() -> str:
    """bcc's version, read without importing it (the agent never loads bcc)."""
    spec = importlib.util.find_spec("bcc")
    if spec is None or spec.origin is None:
        return "none"
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return "unknown"
    return _digest(text.encode())


def build_stamp(pin_dir: Path, bpf_dir: Path) -> dict[str, str]:
    """What programs compiled now in `pin_dir` from `bpf_dir` would be built from."""
    try:
        sources = [
            part
            for path in sorted(bpf_dir.iterdir())
            if path.is_file()
            for part in (path.name.encode(), path.read_bytes())
        ]
    except OSError as e:
        raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: {e.strerror}") from e
    layouts = [_layout(t) for t in (AddrKey, PodConfigStruct, PodCountersStruct)]
    uname = os.uname()
    return {
        "format": STAMP_FORMAT,
        "source": _digest(*sources),
        "flags": _digest(*(repr(x).encode() for x in (cflags(pin_dir), PROGRAMS, MAPS, layouts))),
        "kernel": _digest(uname.release.encode(), uname.version.encode(), uname.machine.encode()),
        "bcc": _bcc_version(),
    }


def read_stamp(pin_dir: Path) -> dict[str, str] | None:
    """The stamp recorded with the pins, or None when there is none."""
    try:
        text = os.readlink(pin_dir / STAMP)
    except OSError:
        return None
    return dict(field.partition("=")[::2] for field in text.split())


def write_stamp(pin_dir: Path, stamp: dict[str, str]) -> None:
    """Record `stamp` with the pins, replacing any other in one step (rename)."""
    text = " ".join(f"{k}={v}" for k, v in stamp.items())
    fresh = pin_dir / f"{STAMP}_{os.getpid()}"  # bpffs refuses names with a dot
    try:
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        os.symlink(text, fresh)
        os.replace(fresh, pin_dir / STAMP)
    except OSError as e:
        raise RedirectError(f"cannot record the build stamp {pin_dir / STAMP}: {e.strerror}") from e


def remove_stamp(pin_dir: Path) -> None:
    try:
        (pin_dir / STAMP).unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RedirectError(f"cannot remove the build stamp {pin_dir / STAMP}: {e.strerror}") from e


def pinned_programs(pin_dir: Path) -> dict[str, str]:
    """The tags of the pinned programs, checked to be complete and of the right types and to
    use the pinned maps; RedirectError says what is not so."""
    tags: dict[str, str] = {}
    used: set[int] = set()
    pinned: set[int] = set()
    try:
        for pin_name, spec in PROGRAMS.items():
            fd = bpfsys.open_program(pin_dir / pin_name, spec.prog_type)
            try:
                tags[pin_name] = bpfsys.program_tag(fd)
                used |= bpfsys.program_map_ids(fd, pin_dir / pin_name)
            finally:
                os.close(fd)
        for name in MAPS:
            fd = bpfsys.obj_get(pin_dir / name)
            try:
                pinned.add(bpfsys.map_id(fd, pin_dir / name))
            finally:
                os.close(fd)
    except OSError as e:
        raise RedirectError(f"cannot open {e.filename}: {e.strerror}") from e
    if not pinned <= used:
        raise RedirectError("the pinned programs do not use the pinned maps (a map was re-pinned)")
    return tags


def compile_or_reuse(
    pin_dir: Path, bpf_dir: Path | None = None, *, timeout: float = COMPILE_TIMEOUT
) -> CompileReport:
    """The programs and maps pinned in `pin_dir`: reused as they are when the build stamp says
    they were built from the same inputs and the pins are complete, else compiled and pinned
    by `compile_and_pin` (same arguments), and the stamp recorded."""
    if bpf_dir is None:
        bpf_dir = packaged_sources()
    pin_dir = Path(os.path.abspath(pin_dir))
    wanted = build_stamp(pin_dir, bpf_dir)
    recorded = read_stamp(pin_dir)
    if recorded is None:
        log.info("no build stamp in %s: compiling the capture programs", pin_dir)
    elif recorded != wanted:
        changed = ", ".join(
            f"{key} {recorded.get(key, '-')} -> {value}"
            for key, value in wanted.items()
            if recorded.get(key) != value
        )
        log.warning(
            "the capture programs pinned in %s were built from other inputs (%s): compiling",
            pin_dir,
            changed or "unknown fields",
        )
    else:
        try:
            tags = pinned_programs(pin_dir)
        except RedirectError as e:
            log.warning(
                "cannot reuse the capture programs pinned in %s (%s): compiling", pin_dir, e
            )
        else:
            log.info("reusing the capture programs pinned in %s (same build stamp)", pin_dir)
            return CompileReport(0.0, tags, frozenset(PROGRAMS), compiled=False)
    # Until the new stamp is written, no stamp vouches for pins the compile may be replacing.
    remove_stamp(pin_dir)
    report = compile_and_pin(pin_dir, bpf_dir, timeout=timeout)
    write_stamp(pin_dir, wanted)
    return report


def compile_and_pin(
    pin_dir: Path, bpf_dir: Path | None = None, *, timeout: float = COMPILE_TIMEOUT
) -> CompileReport:
    """Run the child on `pin_dir` (an existing directory on a bpffs) and return its report.

    `bpf_dir` holds the C sources (default: the ones shipped in this package). The child is
    waited for (or killed when it takes longer than `timeout` seconds) before this returns or
    raises, so no process is left behind.
    """
    problem = missing_headers()
    if problem is not None:
        raise RedirectError(problem)
    if bpf_dir is None:
        bpf_dir = packaged_sources()
    pin_dir, bpf_dir = Path(os.path.abspath(pin_dir)), Path(os.path.abspath(bpf_dir))
    argv = [sys.executable, "-m", MODULE, "--pin-dir", str(pin_dir), "--bpf-dir", str(bpf_dir)]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            # `-m` imports from the working directory first: run from the one holding this
            # copy of ztunnel_py, so the child runs the same code as the agent.
            cwd=PACKAGE_PARENT,
        )
    except subprocess.TimeoutExpired:
        raise RedirectError(
            f"compiling {bpf_dir / 'redirect.c'} took longer than {timeout:g} s; the compiler "
            "process was stopped"
        ) from None
    except OSError as e:
        raise RedirectError(f"cannot start {sys.executable} to compile: {e.strerror}") from e
    diagnostics = done.stderr.decode(errors="replace").strip()
    report = _json_object(done.stdout)
    error = report.get("error")
    if done.returncode != 0 or error is not None:
        if not isinstance(error, str):
            error = f"the BPF compiler process {_exit_status(done.returncode)}"
        raise RedirectError(error + _indented_tail(diagnostics))
    if diagnostics:
        log.warning("the BPF compiler said:%s", _indented_tail(diagnostics))
    return _parse_report(report)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _exit_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    if returncode > 0:
        return f"exited with status {returncode} without a report"
    return "gave no report"


def _indented_tail(text: str) -> str:
    if not text:
        return ""
    lines = text.splitlines()
    shown = lines[-DIAGNOSTIC_LINES:]
    skipped = f"\n  ({len(lines) - len(shown)} earlier lines left out)" if shown != lines else ""
    return skipped + "".join(f"\n  {line}" for line in shown)


def _parse_report(report: dict[str, Any]) -> CompileReport:
    seconds = report.get("compile_seconds")
    programs = report.get("programs")
    if (
        isinstance(seconds, float | int)
        and isinstance(programs, dict)
        and set(programs) == set(PROGRAMS)
        and all(
            isinstance(p, dict)
            and isinstance(p.get("tag"), str)
            and isinstance(p.get("reused"), bool)
            for p in programs.values()
        )
    ):
        return CompileReport(
            compile_seconds=float(seconds),
            tags={name: p["tag"] for name, p in programs.items()},
            reused=frozenset(name for name, p in programs.items() if p["reused"]),
        )
    raise RedirectError(f"the BPF compiler process gave an unreadable report: {report!r}")


# -- the child's side ---------------------------------------------------------------------


def _layout(t: Any) -> tuple[int, list[tuple[str, int]]]:
    """Size and field offsets of a ctypes type (bcc builds one per map from the C structs)."""
    fields = [(f[0], getattr(t, f[0]).offset) for f in getattr(t, "_fields_", ())]
    return ctypes.sizeof(t), fields


def _check_layout(bpf: Any) -> None:
    for table, key, leaf in (
        (bpf[b"zt_pods"], AddrKey, PodConfigStruct),
        (bpf[b"zt_counters"], ctypes.c_uint64, PodCountersStruct),
    ):
        if _layout(table.Key) != _layout(key) or _layout(table.Leaf) != _layout(leaf):
            raise RedirectError("map layout in bpf/ differs from ztunnel_py.redirect.maps")


def _adopt(fresh_fd: int, pin: Path) -> bool:
    """Keep the program pinned at `pin` if it is this code on the same maps (True); otherwise
    pin `fresh_fd` in its place (False)."""
    try:
        old = bpfsys.obj_get(pin)
    except OSError:  # nothing pinned there, or not a BPF object (replaced below)
        old = -1
    if old >= 0:
        try:
            # The tag hashes the code with its map references left out: a program of the same
            # tag that uses other maps (a map pin was removed and made anew) is not this one.
            same = bpfsys.program_tag(old) == bpfsys.program_tag(fresh_fd) and (
                bpfsys.program_map_ids(old, pin) == bpfsys.program_map_ids(fresh_fd, pin)
            )
        finally:
            os.close(old)
        if same:
            return True
    try:
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
        bpfsys.obj_pin(fresh_fd, pin)
    except OSError as e:
        raise RedirectError(f"cannot pin {pin}: {e.strerror}") from e
    return False


def cflags(pin_dir: Path) -> list[str]:
    """The macros redirect.c takes from the compiler: the pin directory, and the agent's ports
    and packet mark (whose one definition is `model/ports.py`)."""
    return [
        f'-DZT_PIN_DIR="{pin_dir}"',
        f"-DZT_PORT_OUTBOUND={OUTBOUND_PORT}",
        f"-DZT_PORT_INBOUND={INBOUND_PLAINTEXT_PORT}",
        f"-DZT_PORT_HBONE={HBONE_PORT}",
        f"-DZT_PORT_DNS={DNS_PORT}",
        f"-DZT_AGENT_MARK={PACKET_MARK:#x}",
    ]


def build(pin_dir: Path, bpf_dir: Path) -> dict[str, Any]:
    """Compile, load and pin; the report as a JSON-ready dict. Only call this in the child."""
    try:
        # Here only: the process that loads bcc (and LLVM) exits right after.
        from bcc import BPF
    except ImportError as e:
        raise RedirectError(f"cannot import bcc (python3-bpfcc) in {sys.executable}: {e}") from e

    check_cflag_path(pin_dir)
    started = time.monotonic()
    try:
        source = (bpf_dir / "redirect.c").read_text()
    except OSError as e:
        raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: {e.strerror}") from e
    try:
        bpf = BPF(text=source.encode(), cflags=[f"-I{bpf_dir}", *cflags(pin_dir)])
    except Exception as e:  # bcc raises bare Exception for compile and load failures
        raise RedirectError(f"cannot compile {bpf_dir / 'redirect.c'}: {e}") from e
    seconds = time.monotonic() - started
    _check_layout(bpf)
    programs: dict[str, dict[str, Any]] = {}
    for pin_name, spec in PROGRAMS.items():
        try:
            loaded = bpf.load_func(spec.func.encode(), spec.prog_type, attach_type=spec.attach_type)
        except Exception as e:  # the verifier's log is on stderr
            raise RedirectError(
                f"cannot load {spec.func} from {bpf_dir / 'redirect.c'}: {e}"
            ) from e
        reused = _adopt(loaded.fd, pin_dir / pin_name)
        programs[pin_name] = {"tag": bpfsys.program_tag(loaded.fd), "reused": reused}
    return {"compile_seconds": seconds, "programs": programs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Compile bpf/redirect.c with bcc, load the capture programs and pin them "
        "and their maps in PIN_DIR (an existing directory on a bpffs); print a JSON report.",
    )
    parser.add_argument("--pin-dir", type=Path, required=True, help="where to pin (bpffs)")
    parser.add_argument(
        "--bpf-dir", type=Path, help="holds redirect.c/.h (default: the sources in this package)"
    )
    args = parser.parse_args(argv)
    # The report gets stdout to itself: whatever bcc or clang print goes to stderr.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        bpf_dir = packaged_sources() if args.bpf_dir is None else args.bpf_dir
        report = build(Path(os.path.abspath(args.pin_dir)), Path(os.path.abspath(bpf_dir)))
        status = 0
    except RedirectError as e:
        report, status = {"error": str(e)}, 1
    with os.fdopen(report_fd, "w") as out:
        json.dump(report, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
