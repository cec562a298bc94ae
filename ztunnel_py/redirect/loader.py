"""Loads the capture programs once per agent and enrolls pods into them.

`Redirector` loads the capture programs' bytecode bundle once, when it is created (the bundle
shipped in the package, or a given or cached one; `compile` builds one with bcc in a child
process only when none matches the sources: the agent never loads bcc and its compiler), unless
the pins of a previous agent carry the same build stamp (same bundle and kernel: then nothing
is loaded, see `programs.load_or_reuse`), then opens what is pinned and attaches the same
programs to every enrolled pod: the tc programs to its interface, the socket lookup program to
its netns (a link pinned under `links/<pod id>`, so it outlives the agent like the filters do),
and `register_listener` gives that program the pod's agent listeners. The maps and programs are
pinned under `<pin_root>/v<LAYOUT_VERSION>/` (`pods`, `counters`, `listeners`, `reuse`,
`ingress`, `egress`, `lookup`, and the stamp `build`) on a bpffs, which is mounted when
missing. A restarted agent reopens the pinned maps, with every pod's settings and counters, and
keeps using the pinned programs when they are the same code (same program tag), so re-enrolling
after a restart changes nothing; new code is pinned in their place and re-enrolling swaps it in
with `replace-filter` (and a link update). The maps are read and written with plain bpf(2)
calls (`bpfsys`), whose key and value types are checked against the pinned maps.

All methods block (a child process, bpf(2), netlink, setns); the agent calls them through
`trio.to_thread`. Namespace work happens on the calling thread inside the pod netns (`entered`),
with a fresh `IPRoute` opened there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pyroute2 import IPRoute

from ztunnel_py.linux.netns import NetnsError, entered
from ztunnel_py.model.ports import DNS_PORT
from ztunnel_py.redirect import bpfsys, podnet
from ztunnel_py.redirect.bpffs import DEFAULT_PIN_ROOT, ensure_bpffs
from ztunnel_py.redirect.bundle import Bundle
from ztunnel_py.redirect.compile import (
    COMPILE_TIMEOUT,
    DEFAULT_CACHE_DIR,
    MAPS,
    PROGRAMS,
    FoundBundle,
    build_key,
    find_bundle,
    packaged_sources,
)
from ztunnel_py.redirect.maps import (
    AddrKey,
    ListenerKey,
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
from ztunnel_py.redirect.programs import STAMP, load_or_reuse

# Bump with any change to the structs in bpf/redirect.h: pinned maps of another layout live in
# another directory and are never reopened with the wrong sizes.
LAYOUT_VERSION = 4
SO_NETNS_COOKIE = 71
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")
PodsMap = bpfsys.PinnedMap[AddrKey, PodConfigStruct]
CountersMap = bpfsys.PinnedMap[ctypes.c_uint64, PodCountersStruct]
ListenersMap = bpfsys.PinnedMap[ListenerKey, ctypes.c_uint32]
LINKS = "links"  # pin subdirectory: each pod's zt_lookup link, named by pod id


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


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """bpf(2) failures as RedirectError: `cannot <what> <path>: <reason>`."""
    try:
        yield
    except OSError as e:
        raise RedirectError(f"cannot {what} {e.filename}: {e.strerror}") from e


def _check_ifname(ifname: str) -> None:
    if not _IFNAME.fullmatch(ifname):
        raise RedirectError(f"{ifname!r} is not an interface name")


def _first(entries: dict[bytes, PodConfigStruct]) -> PodConfigStruct | None:
    """A pod's configuration from its map entries (every one of its IPs carries the same)."""
    return next(iter(entries.values()), None)


class Redirector:
    """The capture programs of one agent process, and the pods enrolled into them."""

    def __init__(
        self,
        pin_root: str | os.PathLike[str] = DEFAULT_PIN_ROOT,
        *,
        bpf_dir: Path | None = None,
        bundle: Path | None = None,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        route_table: int = podnet.ROUTE_TABLE,
        compile_timeout: float = COMPILE_TIMEOUT,
    ) -> None:
        """`bpf_dir` holds the C sources (default: the packaged ones), `bundle` is a bundle
        to load instead of looking for one (it must match them), `cache_dir` where bundles
        compiled on this node are kept."""
        root = Path(os.path.abspath(pin_root))
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
        sources = packaged_sources() if bpf_dir is None else bpf_dir
        found: list[FoundBundle] = []

        def bundle_to_load() -> Bundle:
            found.append(
                find_bundle(sources, explicit=bundle, cache_dir=cache_dir, timeout=compile_timeout)
            )
            return found[0].bundle

        report = load_or_reuse(self.pin_dir, build_key(sources), bundle_to_load)
        # Where the programs came from: None when the pins were reused as they were.
        self.bundle_source = found[0].source if found else None
        self.compile_seconds = found[0].compile_seconds if found else None
        self.compiled = self.compile_seconds is not None
        self.loaded = report.loaded
        self.load_seconds = report.load_seconds
        self.reused_pins = set(report.reused)
        self.programs: dict[str, podnet.Program] = {}
        self._fds = contextlib.ExitStack()
        try:
            with _os_errors("open"):
                self._pods = PodsMap(self.pin_dir / "pods", AddrKey, PodConfigStruct)
                self._fds.callback(self._pods.close)
                self._counters = CountersMap(
                    self.pin_dir / "counters", ctypes.c_uint64, PodCountersStruct
                )
                self._fds.callback(self._counters.close)
                self._listeners = ListenersMap(
                    self.pin_dir / "listeners",
                    ListenerKey,
                    ctypes.c_uint32,
                    map_type=bpfsys.BPF_MAP_TYPE_SOCKHASH,
                )
                self._fds.callback(self._listeners.close)
                for pin_name, spec in PROGRAMS.items():
                    fd = bpfsys.open_program(self.pin_dir / pin_name, spec.prog_type)
                    self._fds.callback(os.close, fd)
                    if bpfsys.program_tag(fd) != report.tags[pin_name]:
                        raise RedirectError(
                            f"{self.pin_dir / pin_name} was replaced while it was loaded (by "
                            "another agent on the same pin root?)"
                        )
                    self.programs[pin_name] = podnet.Program(fd, spec.func)
                (self.pin_dir / LINKS).mkdir(mode=0o700, exist_ok=True)
        except BaseException:
            self.close()
            raise

    def program_ids(self) -> dict[str, int]:
        """Kernel ids of the programs this instance attaches ("ingress", "egress", "lookup")."""
        return {name: bpfsys.program_id(p.fd) for name, p in self.programs.items()}

    def close(self) -> None:
        """Release this process's fds; pinned objects and attached filters stay in force."""
        self._fds.close()

    def remove_pins(self) -> None:
        """Unpin the programs and maps (for `testbed down` and tests): attached pods keep them
        until unenrolled, but a new agent will no longer find them."""
        for name in (STAMP, *PROGRAMS, *MAPS):
            with contextlib.suppress(FileNotFoundError):
                (self.pin_dir / name).unlink()
        links = self.pin_dir / LINKS
        for link in links.glob("*"):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        with contextlib.suppress(OSError):
            links.rmdir()
        with contextlib.suppress(OSError):
            self.pin_dir.rmdir()

    # -- per pod ------------------------------------------------------------------------

    def _all_entries(self) -> dict[bytes, PodConfigStruct]:
        """Every zt_pods entry by raw key."""
        with _os_errors("read the capture map"):
            return {bytes(key): cfg for key, cfg in self._pods.all_items()}

    def _entries(self, pod_id: int) -> dict[bytes, PodConfigStruct]:
        """The pod's zt_pods entries (one per IP), by raw key."""
        return {k: cfg for k, cfg in self._all_entries().items() if cfg.pod_id == pod_id}

    def _current(self, pod_id: int) -> PodConfigStruct | None:
        return _first(self._entries(pod_id))

    def _store(
        self, cfg: PodConfigStruct, addrs: PodAddresses, entries: dict[bytes, PodConfigStruct]
    ) -> None:
        """Point each of the pod's IPs at `cfg`, then drop the pod's `entries` (read by the
        caller under the lock: the map is walked once per change, the walk growing with the
        pods enrolled) for IPs it no longer has."""
        keys = {bytes(addr_key(ip)): addr_key(ip) for ip in addrs.all}
        stale = [raw for raw in entries if raw not in keys]
        with _os_errors("update the capture map"):
            for key in keys.values():
                self._pods.update(key, cfg)
            for raw in stale:
                self._pods.delete(AddrKey.from_buffer_copy(raw))

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
                    entries = self._entries(pod_id)
                    try:
                        self._enroll_here(ipr, netns_fd, pod_id, ifname, addrs, settings, entries)
                    except RedirectError:
                        if not entries:
                            self._unenroll_here(ipr, pod_id, ifname)
                        raise
            except NetnsError as e:
                raise RedirectError(str(e)) from e
        return pod_id

    def _enroll_here(
        self,
        ipr: IPRoute,
        netns_fd: int,
        pod_id: int,
        ifname: str,
        addrs: PodAddresses,
        settings: PodSettings,
        entries: dict[bytes, PodConfigStruct],
    ) -> None:
        previous = _first(entries)
        ifindex = podnet.link_index(ipr, ifname)
        if ifindex is None:
            raise RedirectError(f"the pod netns has no interface {ifname!r}")
        if previous is not None and previous.saved_accept_local:
            saved = previous.saved_accept_local
        else:
            saved = podnet.read_accept_local(ipr, ifindex) + 1
        cfg = encode_config(pod_id, addrs, settings, saved_accept_local=saved, ifindex=ifindex)
        # Counters, then the map entries: they record the sysctl to restore if a step fails.
        with _os_errors("update the capture map"):
            if self._counters.lookup(ctypes.c_uint64(pod_id)) is None:
                self._counters.update(ctypes.c_uint64(pod_id), PodCountersStruct())
        self._store(cfg, addrs, entries)
        if addrs.v4:
            podnet.write_accept_local(ifindex, ifname, 1)
        for family in (4, 6):
            if family in addrs.families:
                podnet.ensure_routing(ipr, family, self.route_table)
            else:
                podnet.remove_routing(ipr, family, self.route_table)
        # The lookup program first: zt_ingress counts on it for SYNs on a TIME_WAIT tuple.
        self._link_lookup(netns_fd, pod_id)
        podnet.attach(ipr, ifindex, self.programs["ingress"], self.programs["egress"])

    def _link_lookup(self, netns_fd: int, pod_id: int) -> None:
        """Link zt_lookup to the pod's netns, pinned so the link outlives this process like
        the tc filters do; an existing link gets this program."""
        pin = self.pin_dir / LINKS / str(pod_id)
        prog_fd = self.programs["lookup"].fd
        with _os_errors("link the lookup program at"):
            try:
                link_fd = bpfsys.obj_get(pin)
            except FileNotFoundError:
                link_fd = bpfsys.link_netns(prog_fd, netns_fd, pin)
                try:
                    bpfsys.obj_pin(link_fd, pin)
                finally:
                    os.close(link_fd)
                return
            try:
                bpfsys.link_update(link_fd, prog_fd, pin)
            finally:
                os.close(link_fd)

    def register_listener(self, pod_id: int, port: int, listener_fd: int) -> None:
        """Make `listener_fd` (the pod's agent listener on `port`: 15001, 15006 or 15008)
        zt_lookup's answer for a SYN tc left to the kernel on that port's behalf; the entry goes
        away by itself when the socket is closed."""
        with _os_errors("update the listener map"):
            self._listeners.update(ListenerKey(pod_id, port), ctypes.c_uint32(listener_fd))

    def register_dns_listener(self, pod_id: int, listener_fd: int, ipv6: bool) -> None:
        """Make `listener_fd` (the pod's DNS proxy TCP listener of that family) zt_lookup's
        answer for DNS over TCP that reuses a TIME_WAIT tuple; gone when the socket closes."""
        key = ListenerKey(pod_id, DNS_PORT, 6 if ipv6 else 4)
        with _os_errors("update the listener map"):
            self._listeners.update(key, ctypes.c_uint32(listener_fd))

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
            podnet.write_accept_local(ifindex, ifname, previous.saved_accept_local - 1)
        self._forget(pod_id)

    def _forget(self, pod_id: int) -> None:
        entries = self._entries(pod_id)
        with _os_errors("update the capture map"):
            for raw in entries:
                self._pods.delete(AddrKey.from_buffer_copy(raw))
            self._counters.delete(ctypes.c_uint64(pod_id))
        # Unpinning the link detaches the lookup program from the pod's netns.
        with contextlib.suppress(FileNotFoundError):
            (self.pin_dir / LINKS / str(pod_id)).unlink()

    def forget(self, pod_id: int) -> None:
        """Drop a pod's map entries without touching its netns (for a netns that is gone)."""
        with self._lock:
            self._forget(pod_id)

    def update_settings(self, netns_fd: int, settings: PodSettings) -> None:
        """Change an enrolled pod's exclusions and probe sources; takes effect at once."""
        pod_id = netns_cookie(netns_fd)
        with self._lock:
            entries = self._entries(pod_id)
            current = _first(entries)
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
            self._store(cfg, addrs, entries)

    def settings(self, netns_fd: int) -> tuple[list[str], PodSettings]:
        """An enrolled pod's IPs and settings, as stored in the map."""
        current = self._current(netns_cookie(netns_fd))
        if current is None:
            raise RedirectError("the pod is not enrolled")
        return decode_addresses(current).as_strings(), decode_settings(current)

    def counters(self, netns_fd: int) -> PodCounters:
        """One enrolled pod's counters."""
        pod_id = netns_cookie(netns_fd)
        with _os_errors("read the capture map"):
            found = self._counters.lookup(ctypes.c_uint64(pod_id))
        if found is None:
            raise RedirectError("the pod is not enrolled")
        return PodCounters.from_struct(found)

    def all_counters(self) -> dict[int, PodCounters]:
        """Counters of every enrolled pod, by pod id (netns cookie)."""
        with _os_errors("read the capture map"):
            return {k.value: PodCounters.from_struct(v) for k, v in self._counters.all_items()}

    def enrolled_pods(self) -> set[int]:
        """Pod ids (netns cookies) of every pod in the maps, including ones a previous agent
        enrolled, so the agent can `forget` pods whose namespace is gone."""
        ids = {cfg.pod_id for cfg in self._all_entries().values()}
        with _os_errors("read the capture map"):
            return ids | {k.value for k in self._counters.all_keys()}
