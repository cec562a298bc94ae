"""Loading a bytecode bundle's maps and programs and pinning them, or reusing the pins of a
previous agent loaded from the same bundle; plain bpf(2) calls (`bpfsys`), no bcc.

- Maps: a pinned map of the bundle's type, key and value sizes, entry count and flags is
  reopened, so every pod's settings and counters survive an agent restart; anything else there
  is replaced by a new map (BPF_MAP_CREATE), pinned in its place.
- Programs: each is loaded (BPF_PROG_LOAD) with the pinned maps' fds patched into its
  instructions; a refusal carries the tail of the verifier's log. A pinned program is kept
  when it is the same code (same program tag) on the same maps, so a restarted agent
  attaches the very programs already in use; other code is pinned in its place.
- Warm start: `load_or_reuse` loads nothing when the pin directory's build stamp (`build`, a
  symlink on the bpffs whose target is a line such as `format=2 bundle=… kernel=…`) names the
  same bundle build key and the running kernel, and every pin is there, of the right type, and
  the programs use the very maps that are pinned. The stamp is removed before a load and
  written after it, so it only ever describes complete pins. Anything else (another bundle, a
  new kernel, a missing or replaced pin) loads the bundle, with a log line naming what
  differed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ztunnel_py.redirect import bpfsys
from ztunnel_py.redirect.bundle import Bundle, MapSpec, relocate
from ztunnel_py.redirect.compile import DIAGNOSTIC_LINES, MAPS, PROGRAMS, digest
from ztunnel_py.redirect.maps import RedirectError

STAMP = "build"  # the build stamp's name in the pin directory
STAMP_FORMAT = "2"  # bump when the stamp's fields or their meaning change

log = logging.getLogger("ztunnel_py.redirect")


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Each pinned program's tag, which pins were kept because they held the same code, and
    whether (and how long) the bundle was loaded."""

    tags: dict[str, str]
    reused: frozenset[str]
    loaded: bool
    load_seconds: float = 0.0


def build_stamp(key: str) -> dict[str, str]:
    """What pins loaded now from the bundle of build key `key` would be made of."""
    uname = os.uname()
    kernel = digest(uname.release.encode(), uname.version.encode(), uname.machine.encode())
    return {"format": STAMP_FORMAT, "bundle": key, "kernel": kernel}


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


def load_or_reuse(pin_dir: Path, key: str, bundle: Callable[[], Bundle]) -> LoadReport:
    """The programs and maps pinned in `pin_dir`: reused as they are when the build stamp names
    bundle build key `key` and this kernel and the pins are complete, else loaded from
    `bundle()` (called only then: finding a bundle may compile one) and the stamp recorded."""
    wanted = build_stamp(key)
    recorded = read_stamp(pin_dir)
    if recorded is None:
        log.info("no build stamp in %s: loading the capture programs", pin_dir)
    elif recorded != wanted:
        changed = ", ".join(
            f"{k} {recorded.get(k, '-')} -> {v}" for k, v in wanted.items() if recorded.get(k) != v
        )
        log.warning(
            "the capture programs pinned in %s were loaded from another bundle or kernel (%s): "
            "loading",
            pin_dir,
            changed or "unknown fields",
        )
    else:
        try:
            tags = pinned_programs(pin_dir)
        except RedirectError as e:
            log.warning("cannot reuse the capture programs pinned in %s (%s): loading", pin_dir, e)
        else:
            log.info("reusing the capture programs pinned in %s (same build stamp)", pin_dir)
            return LoadReport(tags, frozenset(PROGRAMS), loaded=False)
    loaded = bundle()
    # Until the new stamp is written, no stamp vouches for pins the load may be replacing.
    remove_stamp(pin_dir)
    report = load_and_pin(pin_dir, loaded)
    write_stamp(pin_dir, wanted)
    return report


def load_and_pin(pin_dir: Path, bundle: Bundle) -> LoadReport:
    """Create or reopen the bundle's maps and load its programs, pinned in `pin_dir`."""
    started = time.monotonic()
    with contextlib.ExitStack() as fds:
        maps: dict[str, int] = {}
        for pin_name, spec in bundle.maps.items():
            maps[pin_name] = _map_fd(pin_dir / pin_name, spec)
            fds.callback(os.close, maps[pin_name])
        tags: dict[str, str] = {}
        reused: set[str] = set()
        for pin_name, program in bundle.programs.items():
            pin = pin_dir / pin_name
            try:
                fd = bpfsys.prog_load(
                    program.prog_type,
                    relocate(program, maps),
                    bundle.license,
                    program.name,
                    pin,
                    program.expected_attach_type,
                )
            except bpfsys.ProgramRefused as e:
                raise RedirectError(
                    f"the kernel refused {program.name} ({e.strerror}){_log_tail(e.log)}"
                ) from e
            fds.callback(os.close, fd)
            if _adopt(fd, pin):
                reused.add(pin_name)
            tags[pin_name] = bpfsys.program_tag(fd)
    return LoadReport(tags, frozenset(reused), loaded=True, load_seconds=time.monotonic() - started)


def _log_tail(text: str) -> str:
    lines = text.strip().splitlines()[-DIAGNOSTIC_LINES:]
    return "".join(f"\n  {line}" for line in lines)


def _map_fd(pin: Path, spec: MapSpec) -> int:
    """An fd of the map pinned at `pin` if it has `spec`'s attributes; else of a new map,
    pinned there in place of whatever was."""
    fd = _open_pin(pin)
    if fd is not None:
        try:
            _, found = bpfsys.map_attributes(fd, pin)
        except OSError:  # a program, not a map
            found = {}
        wanted = {
            "type": spec.type,
            "key_size": spec.key_size,
            "value_size": spec.value_size,
            "max_entries": spec.max_entries,
            "flags": spec.flags,
        }
        if found == wanted:
            return fd
        os.close(fd)
        log.warning("the map pinned at %s is not the bundle's (%s): replacing it", pin, found)
    try:
        fd = bpfsys.map_create(
            spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, spec.name, pin
        )
    except OSError as e:
        raise RedirectError(f"cannot create the map {spec.name} for {pin}: {e.strerror}") from e
    try:
        _pin_in_place(fd, pin)
    except RedirectError:
        os.close(fd)
        raise
    return fd


def _open_pin(pin: Path) -> int | None:
    """An fd of what is pinned at `pin`, or None: nothing is, or not a BPF object (which the
    caller replaces)."""
    try:
        return bpfsys.obj_get(pin)
    except OSError:
        return None


def _pin_in_place(fd: int, pin: Path) -> None:
    """Pin `fd` at `pin`, replacing whatever was pinned there."""
    try:
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
        bpfsys.obj_pin(fd, pin)
    except OSError as e:
        raise RedirectError(f"cannot pin {pin}: {e.strerror}") from e


def _adopt(fresh_fd: int, pin: Path) -> bool:
    """Keep the program pinned at `pin` if it is this code on the same maps (True); otherwise
    pin `fresh_fd` in its place (False)."""
    old = _open_pin(pin)
    if old is not None:
        try:
            # The tag hashes the code with its map references left out: a program of the same
            # tag that uses other maps (a map pin was removed and made anew) is not this one.
            same = bpfsys.program_tag(old) == bpfsys.program_tag(fresh_fd) and (
                bpfsys.program_map_ids(old, pin) == bpfsys.program_map_ids(fresh_fd, pin)
            )
        except OSError:  # a map, not a program
            same = False
        finally:
            os.close(old)
        if same:
            return True
    _pin_in_place(fresh_fd, pin)
    return False
