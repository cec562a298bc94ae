"""The BPF filesystem the agent pins its programs and maps on.

Pinned objects outlive the agent, so a restarted agent reopens the same maps (with every pod's
settings and counters) and the same programs. Debian does not mount a bpffs by default; when
the pin root is not on one, the agent mounts it: on /sys/fs/bpf when the pin root lives under
it, otherwise on the pin root directory itself.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from ztunnel_py.redirect.maps import RedirectError

BPF_FS_MAGIC = 0xCAFE4A11
SYS_FS_BPF = Path("/sys/fs/bpf")
DEFAULT_PIN_ROOT = SYS_FS_BPF / "ztunnel-py"
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


class _Statfs(ctypes.Structure):
    # Only f_type is read; the buffer is sized for the whole struct statfs (120 bytes on 64-bit).
    _fields_ = (("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112))


def fs_type(path: Path) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise RedirectError(f"statfs {path}: {os.strerror(err)}")
    return int(buf.f_type) & 0xFFFFFFFF


def is_bpffs(path: Path) -> bool:
    return fs_type(path) == BPF_FS_MAGIC


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _mount(target: Path) -> None:
    if _libc.mount(b"bpf", os.fsencode(target), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise RedirectError(f"cannot mount a bpffs on {target}: {os.strerror(err)}")


def ensure_bpffs(pin_root: Path) -> Path | None:
    """Make `pin_root` an existing directory on a bpffs; return the mount point mounted here."""
    pin_root = Path(os.path.abspath(pin_root))
    mounted: Path | None = None
    if not is_bpffs(_existing_ancestor(pin_root)):
        under_sys = pin_root == SYS_FS_BPF or SYS_FS_BPF in pin_root.parents
        mounted = SYS_FS_BPF if under_sys and SYS_FS_BPF.is_dir() else pin_root
        try:
            mounted.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RedirectError(f"cannot create {mounted}: {e.strerror}") from e
        _mount(mounted)
    try:
        pin_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise RedirectError(f"cannot create pin directory {pin_root}: {e.strerror}") from e
    return mounted


def unmount(target: Path) -> None:
    """Unmount a bpffs mounted by `ensure_bpffs` (lazily, so open fds stay valid)."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise RedirectError(f"cannot unmount {target}: {os.strerror(err)}")
