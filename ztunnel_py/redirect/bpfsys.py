"""The bpf(2) system call through ctypes: pinned objects and map elements, without bcc.

The agent process never loads bcc (its LLVM and clang libraries would stay in the agent's
memory): `compile` builds and pins the programs in a child process, and the agent opens the
pins here (BPF_OBJ_GET), reads, writes and deletes map elements one at a time
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
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
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

    _fields_ = (("type", ctypes.c_uint32), ("id", ctypes.c_uint32))


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
