"""Building the capture programs' bytecode bundle with bcc in a short-lived child process, and
finding the bundle that matches this package's sources.

bcc compiles `bpf/redirect.c` with LLVM and clang (about 220 MB of libraries, and the kernel's
headers), so neither the agent process nor the image carries it: the programs ship as a
bytecode bundle (`bundle`), which the agent loads with plain bpf(2) calls (`programs`). This
module makes bundles and says which one to load.

- `build_key(bpf_dir)` digests what the bytecode is made from: the C sources, the compile
  flags, the program and map names and the ctypes layouts in `maps`. A bundle whose key
  differs was built from other sources and is never loaded.
- `find_bundle` looks, in order, at an explicit path (the agent's `--bpf-bundle`; one that does
  not match is an error, not something to fall back from), the bundle shipped in the package
  (`bpf/redirect.bundle.json`: the image builds it, git does not hold it), and the node cache
  (`/var/cache/ztunnel-py/bpf/<build key>.json`). When none matches, it compiles one into the
  cache, which needs bcc and the kernel's headers (`missing_headers`). A malformed or
  mismatched packaged or cached bundle is logged and passed over; a cached one is rebuilt.
- `compile_bundle` runs this module in a new interpreter (`python -m
  ztunnel_py.redirect.compile --out PATH [--bpf-dir DIR]`; `ztunnel-py bpf bundle` is the same
  for operators), which compiles the programs with bcc, takes each one's instructions
  (`BPF.dump_func`), turns the fds of bcc's temporary maps in them into references to the maps
  by name, reads the maps' attributes, writes the bundle atomically (several agents may share
  a cache directory) and exits; bcc's maps and programs die with it. It prints one JSON object
  on stdout, `{"compile_seconds": 1.9, "build_key": "…"}`, or `{"error": "…"}` with exit
  status 1; everything bcc and clang print goes to stderr, which the parent adds to the error
  it raises.

The C sources ship inside this package (`ztunnel_py/redirect/bpf/`, package data) and are found
with `importlib.resources`, so an installed ztunnel_py compiles them as a source checkout does.
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
from ztunnel_py.redirect.bundle import (
    FORMAT,
    Bundle,
    BundleError,
    MapSpec,
    ProgramCode,
    decode,
    unrelocated,
)
from ztunnel_py.redirect.bundle import encode as encode_bundle
from ztunnel_py.redirect.maps import (
    AddrKey,
    PodConfigStruct,
    PodCountersStruct,
    RedirectError,
)

MODULE = "ztunnel_py.redirect.compile"
# The directory holding this copy of the ztunnel_py package (a checkout or site-packages).
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# pin name -> the map's name in the C (BPF_TABLE)
MAPS = {
    "pods": "zt_pods",
    "counters": "zt_counters",
    "listeners": "zt_listeners",
    "reuse": "zt_reuse",
}
BUNDLE_NAME = "redirect.bundle.json"
DEFAULT_CACHE_DIR = Path("/var/cache/ztunnel-py/bpf")
COMPILE_TIMEOUT = 120.0
DIAGNOSTIC_LINES = 30

log = logging.getLogger("ztunnel_py.redirect")


@dataclass(frozen=True, slots=True)
class ProgramSpec:
    """A function of bpf/redirect.c and how it is loaded (0: no expected attach type)."""

    func: str
    prog_type: int
    attach_type: int = 0


# pin name -> program; ingress and egress are the tc programs attached to each pod's
# interface, lookup is linked to each pod's netns
PROGRAMS = {
    "ingress": ProgramSpec("zt_ingress", bpfsys.BPF_PROG_TYPE_SCHED_CLS),
    "egress": ProgramSpec("zt_egress", bpfsys.BPF_PROG_TYPE_SCHED_CLS),
    "lookup": ProgramSpec("zt_lookup", bpfsys.BPF_PROG_TYPE_SK_LOOKUP, bpfsys.BPF_SK_LOOKUP),
}


@dataclass(frozen=True, slots=True)
class FoundBundle:
    """The bundle to load, where it came from, and how long compiling it took (None: it was
    not compiled now)."""

    bundle: Bundle
    source: Path
    compile_seconds: float | None = None


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


def packaged_bundle() -> Path:
    """Where the image puts the bundle built from the packaged sources."""
    return Path(__file__).resolve().parent / "bpf" / BUNDLE_NAME


# Where bcc finds kernel headers: the build tree of the running kernel, else the kernel's own
# archive (CONFIG_IKHEADERS). Only a compile needs them.
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
        "exists. Install the headers package (Debian: linux-headers-$(uname -r)), or use a "
        "kernel with CONFIG_IKHEADERS (`modprobe kheaders`); or give the agent a bundle built "
        "elsewhere (`ztunnel-py bpf bundle -o PATH`, then --bpf-bundle PATH)"
    )


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def build_key(bpf_dir: Path) -> str:
    """What programs compiled now from `bpf_dir` are built from: the digest of the C sources,
    the compile flags, the program and map names and the map layouts (not the kernel: the
    programs use only its stable UAPI, and bcc: it only translates)."""
    try:
        sources = [
            part
            for path in sorted(bpf_dir.iterdir())
            if path.is_file() and path.suffix in (".c", ".h")
            for part in (path.name.encode(), path.read_bytes())
        ]
    except OSError as e:
        raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: {e.strerror}") from e
    if not sources:
        raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: no .c or .h files")
    layouts = [_layout(t) for t in (AddrKey, PodConfigStruct, PodCountersStruct)]
    flags = (FORMAT, cflags(), PROGRAMS, MAPS, layouts)
    return digest(*sources, *(repr(x).encode() for x in flags))


def read_bundle(path: Path) -> Bundle:
    """The bundle in `path`; RedirectError (BundleError when malformed) names the file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RedirectError(f"cannot read the BPF bundle {path}: {e.strerror}") from e
    try:
        return decode(raw)
    except BundleError as e:
        raise BundleError(f"the BPF bundle {path} is malformed: {e}") from None


def mismatch(bundle: Bundle, key: str) -> str | None:
    """Why `bundle` is not the one for sources of build key `key`, or None when it is."""
    if bundle.build_key != key:
        return f"it was built from other sources (build key {bundle.build_key}, not {key})"
    if set(bundle.programs) != set(PROGRAMS) or set(bundle.maps) != set(MAPS):
        return "its programs or maps are not this version's"
    return None


def find_bundle(
    bpf_dir: Path | None = None,
    *,
    explicit: Path | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    timeout: float = COMPILE_TIMEOUT,
) -> FoundBundle:
    """The bundle of the sources in `bpf_dir` (default: the packaged ones): `explicit` if
    given (RedirectError when it does not match), else the packaged one, else the cached one,
    else one compiled into `cache_dir` now."""
    if bpf_dir is None:
        bpf_dir = packaged_sources()
    key = build_key(bpf_dir)
    if explicit is not None:
        bundle = read_bundle(explicit)
        why = mismatch(bundle, key)
        if why is not None:
            raise RedirectError(f"the BPF bundle {explicit} cannot be loaded: {why}")
        return FoundBundle(bundle, explicit)
    cached = cache_dir / f"{key}.json"
    for candidate in (packaged_bundle(), cached):
        if not candidate.exists():
            continue
        try:
            bundle = read_bundle(candidate)
        except RedirectError as e:
            log.warning("%s: not loading it", e)
            continue
        why = mismatch(bundle, key)
        if why is None:
            return FoundBundle(bundle, candidate)
        log.warning("not loading the BPF bundle %s: %s", candidate, why)
    log.info("no BPF bundle of build key %s: compiling %s into %s", key, bpf_dir, cached)
    seconds = compile_bundle(cached, bpf_dir, timeout=timeout)
    bundle = read_bundle(cached)
    why = mismatch(bundle, key)
    if why is not None:  # the sources changed while they were compiled
        raise RedirectError(f"the BPF bundle just compiled into {cached} cannot be loaded: {why}")
    return FoundBundle(bundle, cached, seconds)


def compile_bundle(
    out: Path, bpf_dir: Path | None = None, *, timeout: float = COMPILE_TIMEOUT
) -> float:
    """Run the child to write the bundle of the sources in `bpf_dir` (default: the packaged
    ones) to `out`; return the compile time in seconds.

    The child is waited for (or killed when it takes longer than `timeout` seconds) before
    this returns or raises, so no process is left behind.
    """
    if importlib.util.find_spec("bcc") is None:
        raise RedirectError(
            f"no BPF bundle matches these sources and bcc (python3-bpfcc) is not installed in "
            f"{sys.executable} to compile one: build one where it is (`ztunnel-py bpf bundle "
            "-o PATH`) and pass it with --bpf-bundle PATH"
        )
    problem = missing_headers()
    if problem is not None:
        raise RedirectError(problem)
    if bpf_dir is None:
        bpf_dir = packaged_sources()
    out, bpf_dir = Path(os.path.abspath(out)), Path(os.path.abspath(bpf_dir))
    argv = [sys.executable, "-m", MODULE, "--out", str(out), "--bpf-dir", str(bpf_dir)]
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
    seconds = report.get("compile_seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, float | int):
        raise RedirectError(f"the BPF compiler process gave an unreadable report: {report!r}")
    return float(seconds)


def bundle_command(out: Path, bpf_dir: Path | None) -> int:
    """`ztunnel-py bpf bundle`: compile the sources into a bundle written to `out`."""
    try:
        seconds = compile_bundle(out, bpf_dir)
        bundle = read_bundle(out)
    except RedirectError as e:
        print(f"ztunnel-py bpf bundle: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {len(p.insns) // 8}" for name, p in bundle.programs.items())
    print(
        f"wrote {out}: build key {bundle.build_key}, compiled in {seconds:.2f} s "
        f"(instructions: {sizes})"
    )
    return 0


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


def cflags() -> list[str]:
    """The macros redirect.c takes from the compiler: the agent's ports and packet mark (whose
    one definition is `model/ports.py`)."""
    return [
        f"-DZT_PORT_OUTBOUND={OUTBOUND_PORT}",
        f"-DZT_PORT_INBOUND={INBOUND_PLAINTEXT_PORT}",
        f"-DZT_PORT_HBONE={HBONE_PORT}",
        f"-DZT_PORT_DNS={DNS_PORT}",
        f"-DZT_AGENT_MARK={PACKET_MARK:#x}",
    ]


def _headers() -> str:
    build = MODULES_DIR / os.uname().release / "build"
    return str(build.resolve()) if (build / "include").is_dir() else str(KHEADERS)


def build(bpf_dir: Path) -> tuple[Bundle, float]:
    """Compile with bcc and make the bundle, and the compile time. Only call this in the
    child."""
    try:
        # Here only: the process that loads bcc (and LLVM) exits right after.
        from bcc import BPF
        from bcc.libbcc import lib
    except ImportError as e:
        raise RedirectError(f"cannot import bcc (python3-bpfcc) in {sys.executable}: {e}") from e

    key = build_key(bpf_dir)
    started = time.monotonic()
    try:
        source = (bpf_dir / "redirect.c").read_text()
    except OSError as e:
        raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: {e.strerror}") from e
    try:
        bpf = BPF(text=source.encode(), cflags=[f"-I{bpf_dir}", *cflags()])
    except Exception as e:  # bcc raises bare Exception for compile failures
        raise RedirectError(f"cannot compile {bpf_dir / 'redirect.c'}: {e}") from e
    seconds = time.monotonic() - started
    _check_layout(bpf)
    maps: dict[str, MapSpec] = {}
    fds: dict[int, str] = {}
    for pin_name, table in MAPS.items():
        # bcc's Python tables know no sockhash: ask libbcc for the fd directly.
        fd = int(lib.bpf_table_fd(bpf.module, table.encode()))
        if fd < 0:
            raise RedirectError(f"{bpf_dir / 'redirect.c'} defines no map {table}")
        _, attrs = bpfsys.map_attributes(fd, Path(table))
        maps[pin_name] = MapSpec(name=table, **attrs)
        fds[fd] = pin_name
    programs: dict[str, ProgramCode] = {}
    for pin_name, spec in PROGRAMS.items():
        try:
            raw = bpf.dump_func(spec.func.encode())
        except Exception as e:  # bcc: "Unknown program"
            raise RedirectError(f"{bpf_dir / 'redirect.c'} has no function {spec.func}: {e}") from e
        insns, refs = unrelocated(bytes(raw), fds)
        programs[pin_name] = ProgramCode(spec.func, spec.prog_type, spec.attach_type, insns, refs)
    license = lib.bpf_module_license(bpf.module)
    bundle = Bundle(
        build_key=key,
        license=license.decode() if license else "GPL",
        maps=maps,
        programs=programs,
        built_with={
            "bcc": _bcc_version(),
            "kernel": os.uname().release,
            "headers": _headers(),
        },
    )
    return bundle, seconds


def _bcc_version() -> str:
    try:
        from bcc.version import __version__
    except ImportError:
        return "unknown"
    return str(__version__)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` by `data` in one step: a reader sees the old file or the new one."""
    fresh = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(fresh, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(fresh, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise RedirectError(f"cannot write the BPF bundle {path}: {e.strerror}") from e


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Compile bpf/redirect.c with bcc and write the capture programs' bytecode "
        "bundle to OUT (atomically); print a JSON report.",
    )
    parser.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    parser.add_argument(
        "--bpf-dir", type=Path, help="holds redirect.c/.h (default: the sources in this package)"
    )
    args = parser.parse_args(argv)
    # The report gets stdout to itself: whatever bcc or clang print goes to stderr.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    report: dict[str, Any]
    try:
        bpf_dir = packaged_sources() if args.bpf_dir is None else args.bpf_dir
        bundle, seconds = build(Path(os.path.abspath(bpf_dir)))
        write_atomically(Path(os.path.abspath(args.out)), encode_bundle(bundle))
        report, status = {"compile_seconds": seconds, "build_key": bundle.build_key}, 0
    except RedirectError as e:
        report, status = {"error": str(e)}, 1
    with os.fdopen(report_fd, "w") as out:
        json.dump(report, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
