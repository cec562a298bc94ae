"""The agent's inbound HBONE path in process, over real TLS on loopback: the pod is 127.0.0.1.

The real `Inbound` serves 15008-style connections with a certificate from the in-process CA,
authorizes, connects to a real TCP application and accounts for every connection in its
metrics and access log.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
import trio
from prometheus_client import CollectorRegistry

from tests.integration.hbone_support import TRUST_DOMAIN, TcpApp, authority, dial
from ztunnel_py.agent.inpod import PodProxy
from ztunnel_py.agent.proxy.inbound import Inbound
from ztunnel_py.identity.caclient import LocalCaClient
from ztunnel_py.identity.manager import CertificateManager
from ztunnel_py.model import IPAddress, TunnelProtocol, Workload
from ztunnel_py.model.policy import Action, Authorization, PolicyScope
from ztunnel_py.model.workload import pod_uid
from ztunnel_py.protocol.zds import PodInfo
from ztunnel_py.state.mesh import ProxyState
from ztunnel_py.telemetry.metrics import Metrics
from ztunnel_py.transport.hbone import HboneClientConnection, HboneStatusError, HboneStreamError
from ztunnel_py.transport.podsockets import PodNetns

STREAMS = 60
POD = Workload(
    uid=pod_uid("apps", "server-1"),
    name="server-1",
    namespace="apps",
    addresses=(ipaddress.ip_address("127.0.0.1"),),
    service_account="server",
    tunnel_protocol=TunnelProtocol.HBONE,
)


@dataclass
class Node:
    inbound: Inbound
    metrics: Metrics
    registry: CollectorRegistry
    address: tuple[str, int]

    def total(self, name: str) -> float:
        return sum(
            sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        )


@asynccontextmanager
async def inbound_node() -> AsyncIterator[Node]:
    state = ProxyState()
    state.replace([POD], [], [])
    registry = CollectorRegistry()
    metrics = Metrics(registry, process_metrics=False)
    netns = PodNetns.own()
    pod = PodProxy(PodInfo(POD.uid, POD.name, POD.namespace, POD.service_account), netns)
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        async with trio.open_nursery() as nursery:
            certs = CertificateManager(
                LocalCaClient(authority(TRUST_DOMAIN, "ztunnel-py")), timedelta(hours=1)
            )
            await nursery.start(certs.run)
            inbound = Inbound(
                POD.uid,
                netns,
                state,
                certs,
                metrics,
                TRUST_DOMAIN,
                connect_timeout=timedelta(seconds=5),
                workload_wait=timedelta(seconds=1),
                track=pod.track,
                preserve_source=False,
            )

            async def accept() -> None:
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(inbound.serve_hbone, sock)

            nursery.start_soon(accept)
            yield Node(inbound, metrics, registry, listener.getsockname())
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
        netns.close()


async def connect(node: Node, nursery: trio.Nursery) -> HboneClientConnection:
    return await dial(node.address, nursery, expected=[POD.identity])


async def assert_every_stream_accounted(
    node: Node, app: TcpApp, caplog: pytest.LogCaptureFixture
) -> None:
    """Each of the STREAMS requests was counted as opened and closed and logged once, and
    every app connection the agent opened is closed promptly, not at the next GC."""
    with trio.move_on_after(2):
        while node.total("istio_tcp_connections_closed_total") < STREAMS:
            await trio.sleep(0.01)
        while app.closed < app.accepted:
            await trio.sleep(0.01)
    assert app.closed == app.accepted
    assert node.total("istio_tcp_connections_opened_total") == STREAMS
    assert node.total("istio_tcp_connections_closed_total") == STREAMS
    complete = [r for r in caplog.records if r.getMessage() == "connection complete"]
    assert len(complete) == STREAMS


async def test_streams_reset_before_the_answer_close_the_app_socket_and_are_accounted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="access")
    # A socket left to the cyclic garbage collector must stay open here, as it would for
    # minutes in a busy agent.
    gc.disable()
    try:
        await reset_streams_before_the_answer(caplog)
    finally:
        gc.enable()


async def reset_streams_before_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    app = TcpApp()
    rng = random.Random(15)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, inbound_node() as node:
            await nursery.start(app.run)
            conn = await connect(node, nursery)
            target = f"127.0.0.1:{app.address[1]}"
            for n in range(STREAMS):
                # Half are reset before their HEADERS even left, the others a moment later:
                # while the agent authorizes, connects to the app or answers.
                delay = 0 if n % 2 == 0 else rng.uniform(0, 0.001)
                with trio.move_on_after(delay):
                    stream = await conn.open_stream(target)
                    stream.reset()
            await assert_every_stream_accounted(node, app, caplog)
            # The connection itself is fine: a tunnel still works end to end.
            stream = await conn.open_stream(target)
            await stream.send_all(b"ping")
            await stream.aclose()
            await conn.aclose()
            nursery.cancel_scope.cancel()
    print(f"\napp connections opened and closed: {app.accepted}")


async def test_a_connection_closing_before_the_answers_closes_every_app_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="access")
    app = TcpApp()
    gc.disable()
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery, inbound_node() as node:
                await nursery.start(app.run)
                conn = await connect(node, nursery)
                target = f"127.0.0.1:{app.address[1]}"

                async def open_one() -> None:
                    with contextlib.suppress(HboneStreamError):
                        await conn.open_stream(target)

                async with trio.open_nursery() as clients:
                    for _ in range(STREAMS):
                        clients.start_soon(open_one)
                    await trio.sleep(0.002)
                    await conn.aclose()
                await assert_every_stream_accounted(node, app, caplog)
                nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_a_policy_that_arrives_while_the_app_is_dialled_closes_the_tunnel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Judged allowed, then denied by a policy that came before the connection was tracked for
    late enforcement: the recheck of that change ran without it, so the tunnel itself must look
    again, and close."""
    caplog.set_level(logging.INFO, logger="access")
    app = TcpApp()
    allow_nothing = Authorization("allow-nothing", "apps", PolicyScope.NAMESPACE, Action.ALLOW, ())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, inbound_node() as node:
            await nursery.start(app.run)
            inbound = node.inbound
            dial_app = inbound._connect_app

            async def dial_during_a_change(
                src: IPAddress, dst: IPAddress, port: int
            ) -> trio.socket.SocketType:
                inbound.state.replace([POD], [], [allow_nothing])
                return await dial_app(src, dst, port)

            inbound._connect_app = dial_during_a_change  # type: ignore[method-assign]
            conn = await connect(node, nursery)
            stream = await conn.open_stream(f"127.0.0.1:{app.address[1]}")
            with contextlib.suppress(HboneStreamError):
                await stream.send_all(b"ping")
                while await stream.receive_some(65536):
                    pass
            while app.closed < app.accepted or node.total("istio_tcp_connections_closed_total") < 1:
                await trio.sleep(0.01)
            assert app.accepted == 1
            closed = [r for r in caplog.records if r.getMessage() == "connection complete"]
            assert len(closed) == 1
            assert "connection closed due to policy change" in str(closed[0].__dict__)
            # A new connection is refused outright by the policy now in place.
            with pytest.raises(HboneStatusError, match="status 401"):
                await conn.open_stream(f"127.0.0.1:{app.address[1]}")
            await conn.aclose()
            nursery.cancel_scope.cancel()
