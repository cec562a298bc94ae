"""The bytecode bundle: the capture programs compiled once, loadable without a compiler.

bcc compiles `bpf/redirect.c` with LLVM and clang (about 220 MB of libraries, and kernel
headers on the node). The agent needs neither: `compile` runs bcc once (on the image's build
host, or on a node without a matching bundle) and writes what it produced into a bundle, and
the agent loads the bundle with plain bpf(2) calls (`programs`). This module is the bundle's
format, sans-IO: building, encoding, parsing and validating it, and patching map fds into a
program's instructions.

A bundle is one JSON object (UTF-8):

    {"format": 1,
     "build_key": "<16 hex digits: digest of the C sources, compile flags and map layouts>",
     "byteorder": "little",
     "license": "GPL",
     "built_with": {"bcc": "0.26.0", "kernel": "6.1.0-...", "headers": "/lib/modules/..."},
     "maps": {"pods": {"name": "zt_pods", "type": 1, "key_size": 16, "value_size": 304,
                       "max_entries": 2048, "flags": 0}, ...},
     "programs": {"ingress": {"name": "zt_ingress", "prog_type": 3,
                              "expected_attach_type": 0,
                              "insns": "<base64 of the raw 8-byte instructions>",
                              "map_refs": [[497, "pods"], ...]}, ...}}

Maps and programs are keyed by their pin names. Each `map_refs` entry names a `ld_imm64`
instruction (by index) whose immediate must hold that map's fd: bcc compiled the fd of its own
temporary map into it, which the bundle writer zeroes, and the loader patches the fd of the
agent's pinned map into it (`relocate`). `built_with` is informational; the build key alone
decides whether a bundle matches the sources (the bytecode does not depend on the kernel it
was compiled on: the programs use only the kernel's stable UAPI). `byteorder` is the
instructions' (a big-endian host cannot load a little-endian bundle).

Anything else (a truncated file, a wrong type, an instruction index out of range, a reference
to an instruction that is not a map load) raises `BundleError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ztunnel_py.redirect.maps import RedirectError

FORMAT = 1
INSN_SIZE = 8
MAX_INSNS = 1_000_000  # the kernel's limit for a privileged program
OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, with the terminating NUL
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: a 64-bit immediate over two instructions
BPF_PSEUDO_MAP_FD = 1  # src_reg of a ld_imm64 whose immediate is a map fd
_INSN = struct.Struct("=BBhi")  # code, dst_reg | src_reg << 4, off, imm


class BundleError(RedirectError):
    """A bundle is malformed or does not fit this version; the message says how."""


@dataclass(frozen=True, slots=True)
class MapSpec:
    """How to create one map (BPF_MAP_CREATE)."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class ProgramCode:
    """One program's instructions and the map each fd-load in it refers to."""

    name: str
    prog_type: int
    expected_attach_type: int
    insns: bytes
    map_refs: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Bundle:
    build_key: str
    license: str
    maps: Mapping[str, MapSpec]
    programs: Mapping[str, ProgramCode]
    built_with: Mapping[str, str]
    byteorder: str = sys.byteorder


def unrelocated(
    insns: bytes, map_fds: Mapping[int, str]
) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """Instructions as a compiler left them (map fds in the map loads) made position-free: each
    map load's fd zeroed and recorded as a reference to the map named in `map_fds`."""
    _check_length(insns, "the instructions")
    code = bytearray(insns)
    refs: list[tuple[int, str]] = []
    for index in range(len(code) // INSN_SIZE):
        op, regs, off, imm = _INSN.unpack_from(code, index * INSN_SIZE)
        if op != BPF_LD_IMM64 or regs >> 4 == 0:
            continue
        if regs >> 4 != BPF_PSEUDO_MAP_FD or imm not in map_fds:
            raise BundleError(
                f"instruction {index} loads a kernel object other than a known map "
                f"(src_reg {regs >> 4}, imm {imm}): it cannot be relocated"
            )
        refs.append((index, map_fds[imm]))
        _INSN.pack_into(code, index * INSN_SIZE, op, regs, off, 0)
    return bytes(code), tuple(refs)


def relocate(program: ProgramCode, fds: Mapping[str, int]) -> bytes:
    """`program`'s instructions with the fd of each referenced map (by name in `fds`)."""
    code = bytearray(program.insns)
    for index, name in program.map_refs:
        op, regs, off, _ = _INSN.unpack_from(code, index * INSN_SIZE)
        _INSN.pack_into(code, index * INSN_SIZE, op, regs, off, fds[name])
    return bytes(code)


def encode(bundle: Bundle) -> bytes:
    value = {
        "format": FORMAT,
        "build_key": bundle.build_key,
        "byteorder": bundle.byteorder,
        "license": bundle.license,
        "built_with": dict(bundle.built_with),
        "maps": {
            pin: {
                "name": m.name,
                "type": m.type,
                "key_size": m.key_size,
                "value_size": m.value_size,
                "max_entries": m.max_entries,
                "flags": m.flags,
            }
            for pin, m in bundle.maps.items()
        },
        "programs": {
            pin: {
                "name": p.name,
                "prog_type": p.prog_type,
                "expected_attach_type": p.expected_attach_type,
                "insns": base64.b64encode(p.insns).decode(),
                "map_refs": [list(ref) for ref in p.map_refs],
            }
            for pin, p in bundle.programs.items()
        },
    }
    return json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"


def decode(raw: bytes) -> Bundle:
    """The bundle in `raw`, validated; BundleError says what is wrong with it."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"not a JSON document ({e})") from None
    top = _object(value, "the bundle")
    if top.get("format") != FORMAT:
        raise BundleError(f"format {top.get('format')!r} is not {FORMAT}")
    byteorder = _str(top, "byteorder", "the bundle")
    if byteorder != sys.byteorder:
        raise BundleError(f"its instructions are {byteorder}-endian, this host is {sys.byteorder}")
    built_with = _object(top.get("built_with", {}), "built_with")
    maps = {pin: _map(pin, m) for pin, m in _object(top.get("maps"), "maps").items()}
    programs = {
        pin: _program(pin, p, maps) for pin, p in _object(top.get("programs"), "programs").items()
    }
    return Bundle(
        build_key=_str(top, "build_key", "the bundle"),
        license=_str(top, "license", "the bundle"),
        maps=maps,
        programs=programs,
        built_with={str(k): str(v) for k, v in built_with.items()},
        byteorder=byteorder,
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"{what} is not an object")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{what}: {key} is not a non-empty string")
    return value


def _uint(obj: Mapping[str, Any], key: str, what: str, *, positive: bool = False) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise BundleError(f"{what}: {key} is not a 32-bit unsigned integer")
    if positive and value == 0:
        raise BundleError(f"{what}: {key} is 0")
    return value


def _name(obj: Mapping[str, Any], what: str) -> str:
    name = _str(obj, "name", what)
    if len(name.encode()) >= OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise BundleError(f"{what}: {name!r} is not a kernel object name")
    return name


def _map(pin: str, value: Any) -> MapSpec:
    what = f"map {pin}"
    m = _object(value, what)
    return MapSpec(
        name=_name(m, what),
        type=_uint(m, "type", what, positive=True),
        key_size=_uint(m, "key_size", what, positive=True),
        value_size=_uint(m, "value_size", what, positive=True),
        max_entries=_uint(m, "max_entries", what, positive=True),
        flags=_uint(m, "flags", what),
    )


def _check_length(insns: bytes, what: str) -> None:
    if not insns or len(insns) % INSN_SIZE or len(insns) > MAX_INSNS * INSN_SIZE:
        raise BundleError(
            f"{what} are {len(insns)} bytes: not a whole number of instructions "
            f"(1 to {MAX_INSNS} of {INSN_SIZE} bytes)"
        )


def _program(pin: str, value: Any, maps: Mapping[str, MapSpec]) -> ProgramCode:
    what = f"program {pin}"
    p = _object(value, what)
    try:
        insns = base64.b64decode(_str(p, "insns", what), validate=True)
    except binascii.Error as e:
        raise BundleError(f"{what}: insns is not base64 ({e})") from None
    _check_length(insns, f"{what}: the instructions")
    raw_refs = p.get("map_refs")
    if not isinstance(raw_refs, list):
        raise BundleError(f"{what}: map_refs is not a list")
    refs: list[tuple[int, str]] = []
    count = len(insns) // INSN_SIZE
    for ref in raw_refs:
        if (
            not isinstance(ref, list)
            or len(ref) != 2
            or isinstance(ref[0], bool)
            or not isinstance(ref[0], int)
            or not isinstance(ref[1], str)
        ):
            raise BundleError(f"{what}: map reference {ref!r} is not [index, map]")
        index, name = ref
        if not 0 <= index < count - 1:
            raise BundleError(f"{what}: map reference to instruction {index} of {count}")
        if name not in maps:
            raise BundleError(f"{what}: map reference to unknown map {name!r}")
        op, regs, _, imm = _INSN.unpack_from(insns, index * INSN_SIZE)
        if op != BPF_LD_IMM64 or regs >> 4 != BPF_PSEUDO_MAP_FD or imm != 0:
            raise BundleError(f"{what}: instruction {index} is not an unpatched map load")
        refs.append((index, name))
    referenced = {index for index, _ in refs}
    for index in range(count):
        op, regs, _, _ = _INSN.unpack_from(insns, index * INSN_SIZE)
        if op == BPF_LD_IMM64 and regs >> 4 and index not in referenced:
            raise BundleError(f"{what}: instruction {index} loads an object no map_refs names")
    return ProgramCode(
        name=_name(p, what),
        prog_type=_uint(p, "prog_type", what, positive=True),
        expected_attach_type=_uint(p, "expected_attach_type", what),
        insns=insns,
        map_refs=tuple(refs),
    )
