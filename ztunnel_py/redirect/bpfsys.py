"""The bpf(2) system call through ctypes: maps, programs, pins and map elements, without bcc.

The agent process never loads bcc (its LLVM and clang libraries would stay in the agent's
memory, and the image would carry them): `programs` creates the maps (BPF_MAP_CREATE) and
loads the programs of a bytecode bundle (BPF_PROG_LOAD) here, and the agent opens the
pins (BPF_OBJ_GET), reads, writes and deletes map elements one at a time
(BPF_MAP_LOOKUP_ELEM, _UPDATE_ELEM, _DELETE_ELEM) and walks a whole map in chunks of up to
BATCH entries per call (BPF_MAP_LOOKUP_BATCH; a walk per key would take two calls per entry).
A map's key and value are ctypes types; their sizes are checked against the map's own when it
is opened, so a map pinned with another layout is refused rather than misread.

Failed system calls raise `OSError` with the errno and the pinned path (for example
`FileNotFoundError` for a missing pin); a pinned object of the wrong kind or layout raises
`RedirectError`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Generic, TypeVar

from ztunnel_py.redirect.maps import RedirectError

# include/uapi/linux/bpf.h
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_SK_LOOKUP = 36  # attach type
BPF_PROG_TYPE_SK_LOOKUP = 30
BPF_MAP_TYPE_SOCKHASH = 18
BPF_ANY = 0
BPF_MAP_TYPE_HASH = 1
BPF_PROG_TYPE_SCHED_CLS = 3
BATCH = 256
LOG_SIZE = 1 << 20  # the verifier log kept when a program is refused

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    """The BPF_MAP_*_ELEM member of `union bpf_attr`."""

    _fields_ = (
        ("map_fd", ctypes.c_uint32),
        ("key", ctypes.c_uint64),  # __aligned_u64: 4 bytes of padding before it
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _BatchAttr(ctypes.Structure):
    """The BPF_MAP_*_BATCH member of `union bpf_attr`."""

    _fields_ = (
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    )


class _ObjAttr(ctypes.Structure):
    """The BPF_OBJ_PIN and BPF_OBJ_GET member of `union bpf_attr`."""

    _fields_ = (
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    )


class _InfoAttr(ctypes.Structure):
    """The BPF_OBJ_GET_INFO_BY_FD member of `union bpf_attr`."""

    _fields_ = (
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    )


class _ProgInfo(ctypes.Structure):
    """The head of `struct bpf_prog_info`, up to the map ids (the kernel fills only as much
    as it is given)."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
    )


class _MapInfo(ctypes.Structure):
    """The head of `struct bpf_map_info`."""

    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    )


class _MapCreateAttr(ctypes.Structure):
    """The BPF_MAP_CREATE member of `union bpf_attr`, up to the name."""

    _fields_ = (
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    )


class _ProgLoadAttr(ctypes.Structure):
    """The BPF_PROG_LOAD member of `union bpf_attr`, up to expected_attach_type."""

    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


class _LinkAttr(ctypes.Structure):
    """The BPF_LINK_CREATE and BPF_LINK_UPDATE members of `union bpf_attr` (same offsets:
    create's prog_fd, target_fd and attach_type are update's link_fd, new_prog_fd and flags)."""

    _fields_ = (
        ("first", ctypes.c_uint32),
        ("second", ctypes.c_uint32),
        ("third", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class _Attr(ctypes.Union):
    """The part of `union bpf_attr` these commands use; the kernel zero-fills the rest."""

    _fields_ = (
        ("elem", _ElemAttr),
        ("batch", _BatchAttr),
        ("obj", _ObjAttr),
        ("info", _InfoAttr),
        ("link", _LinkAttr),
        ("map_create", _MapCreateAttr),
        ("prog_load", _ProgLoadAttr),
    )


def _bpf(cmd: int, attr: _Attr, path: Path) -> int:
    if _SYS_BPF is None:
        raise OSError(errno.ENOSYS, f"bpf(2) is not wired up for {platform.machine()}", str(path))
    ret = int(_libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ret


def link_netns(prog_fd: int, netns_fd: int, path: Path) -> int:
    """Link the BPF_SK_LOOKUP program `prog_fd` to the network namespace `netns_fd`; returns
    the link's fd (`path` names it in errors). The link lasts while an fd or a pin holds it."""
    attr = _Attr()
    attr.link.first = prog_fd
    attr.link.second = netns_fd
    attr.link.third = BPF_SK_LOOKUP
    return _bpf(BPF_LINK_CREATE, attr, path)


def link_update(link_fd: int, prog_fd: int, path: Path) -> None:
    """Swap the program of a link for `prog_fd`, atomically."""
    attr = _Attr()
    attr.link.first = link_fd
    attr.link.second = prog_fd
    _bpf(BPF_LINK_UPDATE, attr, path)


def obj_get(path: Path) -> int:
    """A new (close-on-exec) fd of the program or map pinned at `path`."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _Attr()
    attr.obj.pathname = ctypes.addressof(name)
    return _bpf(BPF_OBJ_GET, attr, path)


def obj_pin(fd: int, path: Path) -> None:
    """Pin the program or map behind `fd` at `path` (which must not exist)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    attr = _Attr()
    attr.obj.pathname = ctypes.addressof(name)
    attr.obj.bpf_fd = fd
    _bpf(BPF_OBJ_PIN, attr, path)


def fdinfo(fd: int) -> dict[str, str]:
    """The kernel's description of a BPF fd (prog_type, prog_tag, prog_id; map_type,
    key_size, value_size, max_entries...)."""
    info: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def program_tag(fd: int) -> str:
    """The program's tag: a hash of its instructions, the same for the same code."""
    return fdinfo(fd).get("prog_tag", "")


def program_id(fd: int) -> int:
    return int(fdinfo(fd).get("prog_id", "0"))


def _object_info(fd: int, info: ctypes.Structure, path: Path) -> None:
    attr = _Attr()
    attr.info.bpf_fd = fd
    attr.info.info_len = ctypes.sizeof(info)
    attr.info.info = ctypes.addressof(info)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, path)


def map_id(fd: int, path: Path) -> int:
    """The kernel id of the map behind `fd` (`path` names it in errors)."""
    info = _MapInfo()
    _object_info(fd, info, path)
    return int(info.id)


def map_attributes(fd: int, path: Path) -> tuple[str, dict[str, int]]:
    """The map's name, and its type, key_size, value_size, max_entries and flags."""
    info = _MapInfo()
    _object_info(fd, info, path)
    return info.name.decode(errors="replace"), {
        "type": int(info.type),
        "key_size": int(info.key_size),
        "value_size": int(info.value_size),
        "max_entries": int(info.max_entries),
        "flags": int(info.map_flags),
    }


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    flags: int,
    name: str,
    path: Path,
) -> int:
    """A new map's fd (`path`, where it is to be pinned, names it in errors)."""
    attr = _Attr()
    attr.map_create.map_type = map_type
    attr.map_create.key_size = key_size
    attr.map_create.value_size = value_size
    attr.map_create.max_entries = max_entries
    attr.map_create.map_flags = flags
    attr.map_create.map_name = name.encode()
    return _bpf(BPF_MAP_CREATE, attr, path)


class ProgramRefused(OSError):
    """BPF_PROG_LOAD failed; `log` holds the verifier's log (empty when it gave none)."""

    def __init__(self, err: int, path: Path, log: str) -> None:
        super().__init__(err, os.strerror(err), str(path))
        self.log = log


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str,
    name: str,
    path: Path,
    expected_attach_type: int = 0,
) -> int:
    """Load a program (instructions with map fds patched in); returns its fd. A refusal raises
    ProgramRefused carrying the verifier's log, which a second attempt with logging on asks
    for (the log costs the verifier time, so the first attempt goes without)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _Attr()
    attr.prog_load.prog_type = prog_type
    attr.prog_load.insn_cnt = len(insns) // 8
    attr.prog_load.insns = ctypes.addressof(code)
    attr.prog_load.license = ctypes.addressof(lic)
    attr.prog_load.prog_name = name.encode()
    attr.prog_load.expected_attach_type = expected_attach_type
    try:
        return _bpf(BPF_PROG_LOAD, attr, path)
    except OSError as first:
        log = ctypes.create_string_buffer(LOG_SIZE)
        attr.prog_load.log_level = 1
        attr.prog_load.log_size = LOG_SIZE
        attr.prog_load.log_buf = ctypes.addressof(log)
        try:
            return _bpf(BPF_PROG_LOAD, attr, path)
        except OSError as e:
            # ENOSPC: the log did not fit; the part the kernel kept is still worth showing.
            text = log.value.decode(errors="replace")
            raise ProgramRefused(first.errno or e.errno or errno.EINVAL, path, text) from None


def program_map_ids(fd: int, path: Path) -> set[int]:
    """The kernel ids of the maps the program behind `fd` uses."""
    room = 16
    while True:
        ids = (ctypes.c_uint32 * room)()
        info = _ProgInfo(nr_map_ids=room, map_ids=ctypes.addressof(ids))
        _object_info(fd, info, path)
        if info.nr_map_ids <= room:
            return {int(ids[i]) for i in range(info.nr_map_ids)}
        room = int(info.nr_map_ids)


def open_program(path: Path, prog_type: int = BPF_PROG_TYPE_SCHED_CLS) -> int:
    """An fd of the program pinned at `path`, checked to be a program of `prog_type`."""
    fd = obj_get(path)
    try:
        if fdinfo(fd).get("prog_type") != str(prog_type):
            raise RedirectError(f"{path} is not a BPF program of type {prog_type}")
    except BaseException:
        os.close(fd)
        raise
    return fd


K = TypeVar("K", bound=ctypes.Structure | ctypes.c_uint64)
V = TypeVar("V", bound=ctypes.Structure | ctypes.c_uint64 | ctypes.c_uint32)


class PinnedMap(Generic[K, V]):
    """A pinned BPF map opened by path, with keys of `key_type` and values of `value_type`."""

    def __init__(
        self,
        path: Path,
        key_type: type[K],
        value_type: type[V],
        map_type: int = BPF_MAP_TYPE_HASH,
    ) -> None:
        self.path = path
        self._key_type = key_type
        self._value_type = value_type
        self.fd = obj_get(path)
        try:
            info = fdinfo(self.fd)
            found = {
                "map_type": info.get("map_type"),
                "key_size": info.get("key_size"),
                "value_size": info.get("value_size"),
            }
            expected = {
                "map_type": str(map_type),
                "key_size": str(ctypes.sizeof(key_type)),
                "value_size": str(ctypes.sizeof(value_type)),
            }
            if found != expected:
                raise RedirectError(
                    f"the map pinned at {path} has another layout ({_describe(found)}) than this "
                    f"version expects ({_describe(expected)})"
                )
            self.max_entries = int(info["max_entries"])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _elem(self, cmd: int, key: K, value: V | None, flags: int = 0) -> int:
        attr = _Attr()
        attr.elem.map_fd = self.fd
        attr.elem.key = ctypes.addressof(key)
        attr.elem.value = 0 if value is None else ctypes.addressof(value)
        attr.elem.flags = flags
        return _bpf(cmd, attr, self.path)

    def lookup(self, key: K) -> V | None:
        """The value stored under `key`, or None."""
        value = self._value_type()
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, value)
        except FileNotFoundError:
            return None
        return value

    def update(self, key: K, value: V, flags: int = BPF_ANY) -> None:
        """Store `value` under `key` (BPF_ANY: create or replace)."""
        self._elem(BPF_MAP_UPDATE_ELEM, key, value, flags)

    def delete(self, key: K) -> bool:
        """Remove `key`; False if it was not there."""
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, None)
        except FileNotFoundError:
            return False
        return True

    def all_items(self) -> list[tuple[K, V]]:
        """Every (key, value) pair. The kernel walks the map bucket by bucket, so a key that
        another thread deletes meanwhile does not restart the walk."""
        pairs: list[tuple[K, V]] = []
        key_size, value_size = ctypes.sizeof(self._key_type), ctypes.sizeof(self._value_type)
        count = min(BATCH, self.max_entries)
        # The kernel's position in the map between calls (a hash map's bucket index: a u32).
        position = ctypes.create_string_buffer(max(key_size, 8))
        started = False
        while True:
            keys = ctypes.create_string_buffer(count * key_size)
            values = ctypes.create_string_buffer(count * value_size)
            attr = _Attr()
            attr.batch.in_batch = ctypes.addressof(position) if started else 0
            attr.batch.out_batch = ctypes.addressof(position)
            attr.batch.keys = ctypes.addressof(keys)
            attr.batch.values = ctypes.addressof(values)
            attr.batch.count = count
            attr.batch.map_fd = self.fd
            try:
                _bpf(BPF_MAP_LOOKUP_BATCH, attr, self.path)
                last = False
            except FileNotFoundError:  # the end of the map; this chunk may still hold entries
                last = True
            except OSError as e:
                # A hash bucket with more entries than `count`: retry with room for it.
                if e.errno != errno.ENOSPC or count >= self.max_entries:
                    raise
                count = min(2 * count, self.max_entries)
                continue
            for i in range(attr.batch.count):
                key, value = self._key_type(), self._value_type()
                ctypes.memmove(
                    ctypes.addressof(key), ctypes.addressof(keys) + i * key_size, key_size
                )
                ctypes.memmove(
                    ctypes.addressof(value), ctypes.addressof(values) + i * value_size, value_size
                )
                pairs.append((key, value))
            if last:
                return pairs
            started = True

    def all_keys(self) -> list[K]:
        return [key for key, _ in self.all_items()]


def _describe(layout: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k} {v}" for k, v in layout.items())
