"""The bytecode bundle's format, sans-IO: what the compile writes is what the agent reads,
map references are patched where they belong, and malformed bundles are refused by name."""

from __future__ import annotations

import base64
import json
import struct
import sys
from typing import Any

import pytest

from ztunnel_py.redirect.bundle import (
    Bundle,
    BundleError,
    MapSpec,
    ProgramCode,
    decode,
    encode,
    relocate,
    unrelocated,
)

INSN = struct.Struct("=BBhi")
EXIT = INSN.pack(0x95, 0, 0, 0)
MOV_R0_0 = INSN.pack(0xB7, 0, 0, 0)


def ld_map_fd(fd: int, dst: int = 1, src: int = 1) -> bytes:
    """`r<dst> = map fd` as a compiler leaves it: a ld_imm64 (two slots)."""
    return INSN.pack(0x18, dst | src << 4, 0, fd) + INSN.pack(0, 0, 0, 0)


def imm(code: bytes, index: int) -> int:
    return int(INSN.unpack_from(code, 8 * index)[3])


# As bcc hands it over: map fd 7 (pods) at instruction 1, fd 9 (counters) at 4, a plain
# 64-bit constant (src_reg 0) at 6 that must be left alone.
COMPILED = (
    MOV_R0_0 + ld_map_fd(7) + MOV_R0_0 + ld_map_fd(9, dst=2) + ld_map_fd(-65536, src=0) + EXIT
)
FDS = {7: "pods", 9: "counters"}
MAPS = {
    "pods": MapSpec("zt_pods", 1, 16, 304, 2048),
    "counters": MapSpec("zt_counters", 1, 8, 48, 1024),
}


def sample() -> Bundle:
    insns, refs = unrelocated(COMPILED, FDS)
    return Bundle(
        build_key="0123456789abcdef",
        license="GPL",
        maps=MAPS,
        programs={"ingress": ProgramCode("zt_ingress", 3, 0, insns, refs)},
        built_with={"bcc": "0.26.0", "kernel": "6.1.0-test"},
    )


def test_map_fds_become_references_and_are_patched_back() -> None:
    insns, refs = unrelocated(COMPILED, FDS)
    assert refs == ((1, "pods"), (4, "counters"))
    assert (imm(insns, 1), imm(insns, 4), imm(insns, 6)) == (0, 0, -65536)
    program = ProgramCode("zt_ingress", 3, 0, insns, refs)
    patched = relocate(program, {"pods": 31, "counters": 32})
    assert (imm(patched, 1), imm(patched, 4), imm(patched, 6)) == (31, 32, -65536)
    # Nothing else moves: the patched code is the compiled code with the new fds.
    assert relocate(program, {"pods": 7, "counters": 9}) == COMPILED


def test_an_encoded_bundle_decodes_to_the_same() -> None:
    bundle = sample()
    assert decode(encode(bundle)) == bundle
    value = json.loads(encode(bundle))
    assert value["format"] == 1 and value["byteorder"] == sys.byteorder
    assert value["programs"]["ingress"]["map_refs"] == [[1, "pods"], [4, "counters"]]


def test_a_compiled_load_of_an_unknown_object_cannot_be_bundled() -> None:
    with pytest.raises(BundleError, match=r"instruction 0 loads a kernel object other than a kn"):
        unrelocated(ld_map_fd(8) + EXIT, FDS)
    with pytest.raises(BundleError, match=r"src_reg 2"):
        unrelocated(ld_map_fd(7, src=2) + EXIT, FDS)  # a map value address
    with pytest.raises(BundleError, match="not a whole number of instructions"):
        unrelocated(EXIT[:5], FDS)


def edited(change: Any) -> bytes:
    value = json.loads(encode(sample()))
    change(value)
    return json.dumps(value).encode()


def program(value: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = value["programs"]["ingress"]
    return result


def set_insns(value: dict[str, Any], code: bytes) -> None:
    program(value)["insns"] = base64.b64encode(code).decode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a JSON document"),
        (encode(sample())[:-40], "not a JSON document"),
        (b"\xff\xfe", "not a JSON document"),
        (b"[]", "the bundle is not an object"),
        (edited(lambda v: v.update(format=2)), "format 2 is not 1"),
        (edited(lambda v: v.pop("build_key")), "build_key is not a non-empty string"),
        (
            edited(lambda v: v.update(byteorder="big" if sys.byteorder == "little" else "little")),
            "-endian, this host is",
        ),
        (edited(lambda v: v.update(maps=[])), "maps is not an object"),
        (edited(lambda v: v["maps"]["pods"].update(key_size=0)), "map pods: key_size is 0"),
        (edited(lambda v: v["maps"]["pods"].update(type=True)), "map pods: type is not a 32-bit"),
        (edited(lambda v: v["maps"]["pods"].update(max_entries=2**32)), "max_entries is not"),
        (edited(lambda v: v["maps"]["pods"].update(name="x" * 16)), "is not a kernel object name"),
        (edited(lambda v: program(v).update(insns="!!")), "insns is not base64"),
        (edited(lambda v: set_insns(v, EXIT[:4])), "not a whole number of instructions"),
        (edited(lambda v: program(v).update(map_refs={})), "map_refs is not a list"),
        (edited(lambda v: program(v).update(map_refs=[[1]])), r"\[1\] is not \[index, map\]"),
        (edited(lambda v: program(v)["map_refs"].append([8, "pods"])), "to instruction 8 of 9"),
        (edited(lambda v: program(v)["map_refs"].append([0, "pods"])), "0 is not an unpatched"),
        (edited(lambda v: program(v)["map_refs"].append([6, "pods"])), "6 is not an unpatched"),
        (edited(lambda v: program(v)["map_refs"].pop()), "instruction 4 loads an object no map_"),
        (edited(lambda v: program(v)["map_refs"][0].__setitem__(1, "gone")), "unknown map 'gone'"),
        (
            edited(lambda v: set_insns(v, ld_map_fd(5) + EXIT)),
            "instruction 1 is not an unpatched map load",
        ),
        (edited(lambda v: program(v).update(prog_type=-1)), "prog_type is not a 32-bit"),
    ],
)
def test_a_malformed_bundle_is_refused_with_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        decode(raw)
