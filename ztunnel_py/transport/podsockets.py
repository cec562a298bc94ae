"""Sockets inside a pod's network namespace, created by the agent from its own namespace.

The agent stays in its own netns; to make a socket that lives in a pod's netns it briefly enters
that netns on the calling thread (`setns` is per thread), creates the socket and returns. The
socket stays bound to the pod's netns for its whole life. Every socket made here carries
SO_MARK `PACKET_MARK` (0x539) so the pod's capture programs never capture the agent's own
traffic.

A sidecar proxy (`agent/sidecar.py`) lives in its pod's netns and runs without privileges: its
handle (`PodNetns.own()`) makes sockets where it is, with no setns and no mark (iptables tells
its traffic apart by uid). Behind iptables REDIRECT the original destination of an accepted
connection is `original_destination(sock)` (SO_ORIGINAL_DST), not its local address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import trio

from ztunnel_py.linux.netns import NetnsError, entered, netns_inode
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import PACKET_MARK

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_FREEBIND = 15
LISTEN_BACKLOG = 128

# getsockopt(SOL_IP / SOL_IPV6, SO_ORIGINAL_DST): the destination before a nat REDIRECT
SO_ORIGINAL_DST = 80


class PodNetns:
    """A handle on one pod's network namespace (owns the fd passed at enrollment)."""

    def __init__(self, fd: int, mark: int | None = PACKET_MARK, *, local: bool = False) -> None:
        self.fd = fd
        self.mark = mark
        # the calling process's own netns: sockets are made in place, without setns
        self.local = local
        self.inode = netns_inode(fd)

    @classmethod
    def own(cls) -> PodNetns:
        """The process's own netns, for a proxy living in its pod (no privileges needed)."""
        return cls(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC), None, local=True)

    @classmethod
    def open_path(cls, path: str, mark: int = PACKET_MARK) -> PodNetns:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsError(f"cannot open network namespace {path}: {e.strerror}") from e
        return cls(fd, mark)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _raw_socket(self, family: int, type_: int) -> socket.socket:
        if self.local:
            sock = socket.socket(family, type_)
        else:
            with entered(self.fd):
                sock = socket.socket(family, type_)
        if self.mark is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            except OSError:
                sock.close()
                raise
        return sock

    def listener(
        self,
        host: str,
        port: int,
        *,
        transparent: bool = True,
        reuseport: bool = True,
    ) -> trio.socket.SocketType:
        """A TCP listener bound to host:port inside the pod netns."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._raw_socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:
                _set_transparent(sock, family)
            if family == socket.AF_INET6 and host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise NetnsError(
                f"cannot listen on {SocketAddr(host, port)} in pod netns: {e.strerror}"
            ) from e
        return trio.socket.from_stdlib_socket(sock)

    def datagram(
        self, host: str, port: int, *, transparent: bool = False
    ) -> trio.socket.SocketType:
        """A UDP socket bound to host:port inside the pod netns. `transparent` binds a
        non-local address (SO_REUSEADDR too, so several sockets can send from it): how DNS
        answers leave from the resolver address the pod asked."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self._raw_socket(family, socket.SOCK_DGRAM)
        try:
            if transparent:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _set_transparent(sock, family)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise NetnsError(
                f"cannot bind UDP {SocketAddr(host, port)} in pod netns: {e.strerror}"
            ) from e
        return trio.socket.from_stdlib_socket(sock)

    async def connect(
        self,
        address: tuple[str, int],
        *,
        bind_ip: str | None = None,
        connect_timeout: float = 10.0,
    ) -> trio.socket.SocketType:
        """A TCP connection from inside the pod netns.

        With `bind_ip` the socket binds transparently to that (non-local) address first, so the
        peer sees it as the source: how inbound traffic keeps the client's IP.
        """
        ip = ipaddress.ip_address(address[0])
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        raw = self._raw_socket(family, socket.SOCK_STREAM)
        raw.setblocking(False)
        sock = trio.socket.from_stdlib_socket(raw)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if bind_ip is not None:
                _set_transparent(raw, family)
                await sock.bind((bind_ip, 0))
            with trio.fail_after(connect_timeout):
                await sock.connect((str(ip), address[1]))
        except BaseException:
            sock.close()
            raise
        return sock


def local_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """Where an accepted connection was going when capture keeps it (BPF sk_assign): its local
    address."""
    local = sock.getsockname()
    return str(local[0]), int(local[1])


def original_destination(sock: trio.socket.SocketType) -> tuple[str, int]:
    """Where a connection was going before iptables REDIRECT sent it to our listener.

    OSError when the connection was not redirected (no conntrack nat entry).
    """
    if sock.family == socket.AF_INET6:
        local = sock.getsockname()[0]
        if not local.startswith("::ffff:"):
            # struct sockaddr_in6: family, port, flowinfo, 16-byte address, scope id
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            port, address = struct.unpack_from("!2xH4x16s", raw)
            return socket.inet_ntop(socket.AF_INET6, address), port
    # struct sockaddr_in (IPv4, also for IPv4 peers of a dual-stack listener)
    raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntop(socket.AF_INET, address), port


def _set_transparent(sock: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
