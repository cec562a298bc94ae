"""Loads the capture programs once per agent and enrolls pods into them.

`Redirector` compiles `bpf/redirect.c` with bcc once, when it is created, and attaches the same
two programs to every enrolled pod. The maps and both programs are pinned under
`<pin_root>/v<LAYOUT_VERSION>/` (`pods`, `counters`, `ingress`, `egress`) on a bpffs, which is
mounted when missing. A restarted agent reopens the pinned maps, with every pod's settings and
counters (bcc's BPF_TABLE_PINNED), and keeps using the pinned programs when they are the same
code (same program tag), so re-enrolling after a restart changes nothing; new code is pinned
in their place and re-enrolling swaps it in with `replace-filter`.

All methods block (bcc, netlink, setns); the agent calls them through `trio.to_thread`.
Namespace work happens on the calling thread inside the pod netns (`entered`), with a fresh
`IPRoute` opened there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bcc import BPF
from bcc.libbcc import lib as libbcc
from pyroute2 import IPRoute

from ztunnel_py.agent.netns import NetnsError, entered
from ztunnel_py.redirect import podnet
from ztunnel_py.redirect.bpffs import DEFAULT_PIN_ROOT, ensure_bpffs
from ztunnel_py.redirect.model import (
    AddrKey,
    PodAddresses,
    PodConfigStruct,
    PodCounters,
    PodCountersStruct,
    PodSettings,
    RedirectError,
    addr_key,
    decode_addresses,
    decode_settings,
    encode_config,
)

# Bump with any change to the structs in bpf/redirect.h: pinned maps of another layout live in
# another directory and are never reopened with the wrong sizes.
LAYOUT_VERSION = 1
BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
SO_NETNS_COOKIE = 71
PROGRAMS = {"ingress": "zt_ingress", "egress": "zt_egress"}
MAPS = ("pods", "counters")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")

libbcc.bpf_obj_pin.restype = ctypes.c_int
libbcc.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
libbcc.bpf_obj_get.restype = ctypes.c_int
libbcc.bpf_obj_get.argtypes = [ctypes.c_char_p]


def netns_cookie_here() -> int:
    """The cookie of the calling thread's network namespace: the pod id of a pod enrolled in it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        value: int = struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    return value


def netns_cookie(netns_fd: int) -> int:
    """The cookie of the network namespace behind `netns_fd`."""
    try:
        with entered(netns_fd):
            return netns_cookie_here()
    except NetnsError as e:
        raise RedirectError(str(e)) from e


def default_route_interface(netns_fd: int) -> str:
    """The pod's default-route interface: where the capture programs go."""
    try:
        with entered(netns_fd), IPRoute() as ipr:
            return podnet.default_route_interface(ipr)
    except NetnsError as e:
        raise RedirectError(str(e)) from e


def _fdinfo(fd: int) -> dict[str, str]:
    info: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    return info


def program_tag(fd: int) -> str:
    return _fdinfo(fd).get("prog_tag", "")


def program_id(fd: int) -> int:
    return int(_fdinfo(fd).get("prog_id", "0"))


def _layout(t: Any) -> tuple[int, list[tuple[str, int]]]:
    """Size and field offsets of a ctypes type (bcc builds one per map from the C structs)."""
    fields = [(f[0], getattr(t, f[0]).offset) for f in getattr(t, "_fields_", ())]
    return ctypes.sizeof(t), fields


def _check_ifname(ifname: str) -> None:
    if not _IFNAME.fullmatch(ifname):
        raise RedirectError(f"{ifname!r} is not an interface name")


class Redirector:
    """The capture programs of one agent process, and the pods enrolled into them."""

    def __init__(
        self,
        pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
        *,
        bpf_dir: Path = BPF_DIR,
        route_table: int = podnet.ROUTE_TABLE,
    ) -> None:
        root = Path(os.path.abspath(pin_root))
        if '"' in str(root) or "\\" in str(root):
            raise RedirectError(f"pin root {root} contains a quote or backslash")
        if not 0 < route_table < 2**32 or route_table in (253, 254, 255):
            raise RedirectError(f"route table {route_table} is reserved or out of range")
        self.pin_root = root
        self.pin_dir = root / f"v{LAYOUT_VERSION}"
        self.route_table = route_table
        self.mounted = ensure_bpffs(root)
        try:
            self.pin_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise RedirectError(f"cannot create {self.pin_dir}: {e.strerror}") from e
        self._lock = threading.Lock()
        started = time.monotonic()
        try:
            source = (bpf_dir / "redirect.c").read_text()
        except OSError as e:
            raise RedirectError(f"cannot read the BPF sources in {bpf_dir}: {e.strerror}") from e
        try:
            self._bpf = BPF(
                text=source.encode(), cflags=[f"-I{bpf_dir}", f'-DZT_PIN_DIR="{self.pin_dir}"']
            )
        except Exception as e:  # bcc raises bare Exception for compile and load failures
            raise RedirectError(f"cannot compile {bpf_dir / 'redirect.c'}: {e}") from e
        self.compile_seconds = time.monotonic() - started
        self._owned_fds: list[int] = []
        self.programs: dict[str, podnet.Program] = {}
        self.reused_pins: set[str] = set()
        try:
            self._pods = self._bpf[b"zt_pods"]
            self._counters = self._bpf[b"zt_counters"]
            self._check_layout()
            for pin_name, func in PROGRAMS.items():
                loaded = self._bpf.load_func(func.encode(), BPF.SCHED_CLS)
                fd = self._adopt(loaded.fd, self.pin_dir / pin_name)
                if fd != loaded.fd:
                    self.reused_pins.add(pin_name)
                self.programs[pin_name] = podnet.Program(fd, func)
        except BaseException:
            self.close()
            raise

    def _check_layout(self) -> None:
        for table, key, leaf in (
            (self._pods, AddrKey, PodConfigStruct),
            (self._counters, ctypes.c_uint64, PodCountersStruct),
        ):
            if _layout(table.Key) != _layout(key) or _layout(table.Leaf) != _layout(leaf):
                raise RedirectError("map layout in bpf/ differs from ztunnel_py.redirect.model")

    def _adopt(self, fresh_fd: int, pin: Path) -> int:
        """The pinned program if it is this code, otherwise `fresh_fd`, pinned in its place."""
        if pin.exists():
            old = int(libbcc.bpf_obj_get(os.fsencode(pin)))
            if old >= 0:
                if program_tag(old) == program_tag(fresh_fd):
                    self._owned_fds.append(old)
                    return old
                os.close(old)
            pin.unlink()
        rc = int(libbcc.bpf_obj_pin(fresh_fd, os.fsencode(pin)))
        if rc != 0:  # libbpf returns -errno
            raise RedirectError(f"cannot pin {pin}: {os.strerror(-rc)}")
        return fresh_fd

    def program_ids(self) -> dict[str, int]:
        """Kernel ids of the programs this instance attaches ("ingress", "egress")."""
        return {name: program_id(p.fd) for name, p in self.programs.items()}

    def close(self) -> None:
        """Release this process's fds; pinned objects and attached filters stay in force."""
        for fd in self._owned_fds:
            os.close(fd)
        self._owned_fds.clear()
        self._bpf.cleanup()

    def remove_pins(self) -> None:
        """Unpin the programs and maps (for `testbed down` and tests): attached pods keep them
        until unenrolled, but a new agent will no longer find them."""
        for name in (*PROGRAMS, *MAPS):
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / name).unlink()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()

    # -- per pod ------------------------------------------------------------------------

    def _all_entries(self) -> dict[bytes, PodConfigStruct]:
        """Every zt_pods entry by raw key (one batched syscall per chunk, not two per key)."""
        return {
            bytes(key): PodConfigStruct.from_buffer_copy(bytes(leaf))
            for key, leaf in self._pods.items_lookup_batch()
        }

    def _entries(self, pod_id: int) -> dict[bytes, PodConfigStruct]:
        """The pod's zt_pods entries (one per IP), by raw key."""
        return {k: cfg for k, cfg in self._all_entries().items() if cfg.pod_id == pod_id}

    def _current(self, pod_id: int) -> PodConfigStruct | None:
        entries = self._entries(pod_id)
        return next(iter(entries.values())) if entries else None

    def _update(
        self, table: Any, key: ctypes.Structure | ctypes.c_uint64, value: ctypes.Structure
    ) -> None:
        try:
            table[key] = value
        except Exception as e:  # bcc raises bare Exception when the update fails
            raise RedirectError(f"cannot update the capture map: {e}") from e

    def _store(self, cfg: PodConfigStruct, addrs: PodAddresses) -> None:
        """Point each of the pod's IPs at `cfg`, then drop entries for IPs it no longer has."""
        keys = {bytes(addr_key(ip)): addr_key(ip) for ip in addrs.all}
        for key in keys.values():
            self._update(self._pods, key, cfg)
        for raw in self._entries(cfg.pod_id):
            if raw not in keys:
                with contextlib.suppress(KeyError):
                    del self._pods[AddrKey.from_buffer_copy(raw)]

    def enroll(
        self,
        netns_fd: int,
        ifname: str,
        pod_ips: Sequence[str],
        settings: PodSettings | None = None,
    ) -> int:
        """Capture the pod's TCP on `ifname` (idempotent; re-enrolling replaces everything).

        Returns the pod id (its netns cookie), the key of its counters and of `forget`. A pod
        IP still held by a pod that was never unenrolled (its netns is gone, the IP reused) is
        taken over by this pod.
        """
        _check_ifname(ifname)
        addrs = PodAddresses.parse(pod_ips)
        settings = settings if settings is not None else PodSettings()
        with self._lock:
            try:
                with entered(netns_fd), IPRoute() as ipr:
                    pod_id = netns_cookie_here()
                    previous = self._current(pod_id)
                    try:
                        self._enroll_here(ipr, pod_id, ifname, addrs, settings, previous)
                    except RedirectError:
                        if previous is None:
                            self._unenroll_here(ipr, pod_id, ifname)
                        raise
            except NetnsError as e:
                raise RedirectError(str(e)) from e
        return pod_id

    def _enroll_here(
        self,
        ipr: IPRoute,
        pod_id: int,
        ifname: str,
        addrs: PodAddresses,
        settings: PodSettings,
        previous: PodConfigStruct | None,
    ) -> None:
        ifindex = podnet.link_index(ipr, ifname)
        if ifindex is None:
            raise RedirectError(f"the pod netns has no interface {ifname!r}")
        if previous is not None and previous.saved_accept_local:
            saved = previous.saved_accept_local
        else:
            saved = podnet.read_accept_local(ifname) + 1
        cfg = encode_config(pod_id, addrs, settings, saved_accept_local=saved, ifindex=ifindex)
        # Counters, then the map entries: they record the sysctl to restore if a step fails.
        if ctypes.c_uint64(pod_id) not in self._counters:
            self._update(self._counters, ctypes.c_uint64(pod_id), PodCountersStruct())
        self._store(cfg, addrs)
        if addrs.v4:
            podnet.write_accept_local(ifname, 1)
        for family in (4, 6):
            if family in addrs.families:
                podnet.ensure_routing(ipr, family, self.route_table)
            else:
                podnet.remove_routing(ipr, family, self.route_table)
        podnet.attach(ipr, ifindex, self.programs["ingress"], self.programs["egress"])

    def pod_interface(self, netns_fd: int) -> tuple[str, list[str]]:
        """The pod's default-route interface and its global addresses: where capture goes."""
        try:
            with entered(netns_fd), IPRoute() as ipr:
                ifname = podnet.default_route_interface(ipr)
                return ifname, podnet.interface_addresses(ipr, ifname)
        except NetnsError as e:
            raise RedirectError(str(e)) from e

    def unenroll(self, netns_fd: int, ifname: str) -> None:
        """Remove everything `enroll` did in the pod netns (a pod never enrolled is fine)."""
        _check_ifname(ifname)
        with self._lock:
            try:
                with entered(netns_fd), IPRoute() as ipr:
                    self._unenroll_here(ipr, netns_cookie_here(), ifname)
            except NetnsError as e:
                raise RedirectError(str(e)) from e

    def _unenroll_here(self, ipr: IPRoute, pod_id: int, ifname: str) -> None:
        ifindex = podnet.link_index(ipr, ifname)
        if ifindex is not None:
            podnet.detach(ipr, ifindex)
        for family in (4, 6):
            podnet.remove_routing(ipr, family, self.route_table)
        previous = self._current(pod_id)
        if previous is not None and previous.saved_accept_local and ifindex is not None:
            podnet.write_accept_local(ifname, previous.saved_accept_local - 1)
        self._forget(pod_id)

    def _forget(self, pod_id: int) -> None:
        for raw in self._entries(pod_id):
            with contextlib.suppress(KeyError):
                del self._pods[AddrKey.from_buffer_copy(raw)]
        with contextlib.suppress(KeyError):
            del self._counters[ctypes.c_uint64(pod_id)]

    def forget(self, pod_id: int) -> None:
        """Drop a pod's map entries without touching its netns (for a netns that is gone)."""
        with self._lock:
            self._forget(pod_id)

    def update_settings(self, netns_fd: int, settings: PodSettings) -> None:
        """Change an enrolled pod's exclusions and probe sources; takes effect at once."""
        pod_id = netns_cookie(netns_fd)
        with self._lock:
            current = self._current(pod_id)
            if current is None:
                raise RedirectError("the pod is not enrolled")
            addrs = decode_addresses(current)
            cfg = encode_config(
                pod_id,
                addrs,
                settings,
                saved_accept_local=current.saved_accept_local,
                ifindex=current.ifindex,
            )
            self._store(cfg, addrs)

    def settings(self, netns_fd: int) -> tuple[list[str], PodSettings]:
        """An enrolled pod's IPs and settings, as stored in the map."""
        current = self._current(netns_cookie(netns_fd))
        if current is None:
            raise RedirectError("the pod is not enrolled")
        return decode_addresses(current).as_strings(), decode_settings(current)

    def counters(self, netns_fd: int) -> PodCounters:
        """One enrolled pod's counters."""
        pod_id = netns_cookie(netns_fd)
        try:
            leaf = self._counters[ctypes.c_uint64(pod_id)]
        except KeyError:
            raise RedirectError("the pod is not enrolled") from None
        return PodCounters.from_struct(PodCountersStruct.from_buffer_copy(bytes(leaf)))

    def all_counters(self) -> dict[int, PodCounters]:
        """Counters of every enrolled pod, by pod id (netns cookie)."""
        return {
            int(k): PodCounters.from_struct(PodCountersStruct.from_buffer_copy(bytes(v)))
            for k, v in self._counters.items_lookup_batch()
        }

    def enrolled_pods(self) -> set[int]:
        """Pod ids (netns cookies) of every pod in the maps, including ones a previous agent
        enrolled, so the agent can `forget` pods whose namespace is gone."""
        ids = {cfg.pod_id for cfg in self._all_entries().values()}
        return ids | {int(k) for k, _ in self._counters.items_lookup_batch()}
