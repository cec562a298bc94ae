"""Network namespace plumbing for the testbed: `ip` commands, and code run inside a namespace.

Every link is created from inside the namespaces that hold it (`ip -n A link add ... peer ...
netns B`), so nothing ever appears in the machine's own namespace, not even for a moment.
Probes that need a socket in a namespace run `fn` on a short-lived thread that has `setns`-ed
into it: a network namespace switch is per thread, so the rest of the process is unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

from ztunnel_py.linux.netns import setns
from ztunnel_py.testbed.errors import TestbedError

NETNS_DIR = "/run/netns"
# /proc/net/tcp state column value of a listening socket.
_TCP_LISTEN = "0A"

T = TypeVar("T")


def ip(*args: str, netns: str | None = None) -> str:
    """Run `ip [-n netns] args...`; raise TestbedError with ip's message on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def add(name: str) -> None:
    ip("netns", "add", name)


def delete(name: str) -> None:
    """Remove the namespace's name; the kernel frees it once no process or mount holds it."""
    if exists(name):
        ip("netns", "delete", name)


def add_veth(name: str, name_netns: str, peer: str, peer_netns: str) -> None:
    """A veth pair `name` (in `name_netns`) <-> `peer` (in `peer_netns`), born in place."""
    args = ["link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_netns]
    ip(*args, netns=name_netns)


def mac_address(name: str, ifname: str) -> str:
    """The hardware address of interface `ifname` in namespace `name`."""
    links = json.loads(ip("-j", "link", "show", "dev", ifname, netns=name))
    return str(links[0]["address"])


def pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (empty when the namespace is gone)."""
    if not exists(name):
        return []
    proc = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    )
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a thread that has joined network namespace `name`; return its result."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            failure.append(TestbedError(f"network namespace {name} does not exist"))
            return
        try:
            setns(fd)
        except OSError as e:
            failure.append(OSError(e.errno, f"setns into {name}: {e.strerror}"))
            return
        finally:
            os.close(fd)
        try:
            outcome.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def set_sysctl(name: str, key: str, value: str) -> None:
    """Write a per-namespace sysctl such as `net/ipv4/ip_forward` inside namespace `name`."""

    def write() -> None:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)

    run_in(name, write)


def listening_ports(pid: int) -> set[int]:
    """TCP ports listening in the network namespace of process `pid` (empty if it is gone)."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
