"""The SOCKS5 listener (127.0.0.1:15080 in each pod): explicit proxying into the mesh.

CONNECT requests name an IP or a hostname; a hostname is resolved against the mesh's services
(`echo.apps.svc.cluster.local` and the short forms `echo.apps`, `echo.apps.svc`) to the
service's VIP, then the connection takes the same outbound path as captured traffic. The reply
is sent once the upstream is open (or failed), so a client learns of a refusal immediately.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable

import trio

from ztunnel_py.agent.proxy.outbound import OutboundError, Ready
from ztunnel_py.model import IPAddress
from ztunnel_py.protocol.socks5 import ReplyCode, Socks5Error, Socks5Server
from ztunnel_py.state.mesh import ProxyState

log = logging.getLogger("ztunnel_py.socks5")

HANDSHAKE_TIMEOUT = 10.0
CLUSTER_SUFFIX = ".svc.cluster.local"

Connect = Callable[[IPAddress, int, Ready, bytes], Awaitable[None]]


def resolve(state: ProxyState, host: str) -> IPAddress | None:
    """A mesh service hostname (FQDN or `name.namespace[.svc]`) to its first VIP."""
    name = host.rstrip(".").lower()
    candidates = [name]
    if not name.endswith(CLUSTER_SUFFIX):
        base = name.removesuffix(".svc")
        candidates.append(base + CLUSTER_SUFFIX)
    for service in state.services():
        if service.hostname.lower() in candidates and service.vips:
            return service.vips[0].address
    return None


async def serve_socks5(sock: trio.socket.SocketType, state: ProxyState, connect: Connect) -> None:
    """Negotiate one SOCKS5 client, then hand the connection to `connect`."""
    server = Socks5Server()
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            request = None
            while request is None:
                data = await sock.recv(4096)
                if not data:
                    return
                request = server.receive_data(data)
                await _flush(sock, server)
    except Socks5Error as e:
        log.info("socks5: refused: %s", e.reason)
        await _flush(sock, server)
        return
    except trio.TooSlowError:
        log.info("socks5: client did not finish the handshake in %.0f s", HANDSHAKE_TIMEOUT)
        return
    host = request.host
    if isinstance(host, str):
        resolved = resolve(state, host)
        if resolved is None:
            log.info("socks5: cannot resolve %r: not a mesh service", host)
            server.reply_failure(ReplyCode.HOST_UNREACHABLE)
            await _flush(sock, server)
            return
        host = resolved

    async def ready(error: OutboundError | None) -> None:
        if error is None:
            local = sock.getsockname()
            server.reply_success(ipaddress.ip_address(local[0]), local[1])
        else:
            server.reply_failure(_reply_code(error))
        await _flush(sock, server)

    await connect(host, request.port, ready, server.remaining)


def _reply_code(error: OutboundError) -> ReplyCode:
    if error.flag == "DENY":
        return ReplyCode.NOT_ALLOWED
    if error.refused:
        return ReplyCode.CONNECTION_REFUSED
    return ReplyCode.HOST_UNREACHABLE


async def _flush(sock: trio.socket.SocketType, server: Socks5Server) -> None:
    data = server.data_to_send()
    while data:
        sent = await sock.send(data)
        data = data[sent:]
