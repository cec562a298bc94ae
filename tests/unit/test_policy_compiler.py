"""The agent compiles a workload's authorization policies in a worker thread: a 10,000-policy
compile no longer stalls the event loop, connections waiting for the same set share one compile,
and a connection is always judged by the policies of the current state (never a stale set)."""

from __future__ import annotations

import ipaddress
import time

import trio
import trio.testing

from ztunnel_py.agent.proxy.policies import PolicyCompiler
from ztunnel_py.model import Action, Authorization, Match, PolicyScope, Workload
from ztunnel_py.policy.rbac import Connection, PolicySet
from ztunnel_py.state.mesh import ProxyState

POLICIES = 10_000


def workload(name: str, address: str) -> Workload:
    return Workload(
        uid=f"Kubernetes//Pod/demo/{name}",
        name=name,
        namespace="demo",
        addresses=(ipaddress.ip_address(address),),
        service_account=name,
    )


def deny_port(name: str, port: int) -> Authorization:
    return Authorization(
        name=name,
        namespace="demo",
        scope=PolicyScope.NAMESPACE,
        action=Action.DENY,
        rules=(((Match(destination_ports=(port,)),),),),
    )


def to_port(port: int) -> Connection:
    return Connection(
        ipaddress.ip_address("10.0.0.9"), None, ipaddress.ip_address("10.0.0.1"), port
    )


def many_policies() -> list[Authorization]:
    """10,000 namespace policies, each denying one port from 20000 on."""
    return [deny_port(f"p{i}", 20_000 + i) for i in range(POLICIES)]


async def test_a_large_compile_runs_off_the_event_loop() -> None:
    server = workload("server", "10.0.0.1")
    state = ProxyState()
    state.replace([server], [], many_policies())
    began = time.perf_counter()
    PolicySet(state.policy_inputs(server))
    inline = time.perf_counter() - began  # what a compile on the event loop would stall it for

    state.apply_delta(policies=[deny_port("late", 9999)])  # a change: the cache is gone
    compiler = PolicyCompiler(state)
    ticks = 0
    during: list[int] = []
    compiled = trio.Event()

    async def ticker() -> None:  # everything else the event loop serves meanwhile
        nonlocal ticks
        while not compiled.is_set():
            await trio.sleep(0.001)
            ticks += 1

    async def connection() -> None:
        first = ticks
        began = time.perf_counter()
        policies = await compiler.policies_for(server)
        took = time.perf_counter() - began
        print(
            f"inline compile {inline * 1000:.0f} ms; in a thread {took * 1000:.0f} ms, "
            f"the event loop ticked {ticks - first} times meanwhile"
        )
        during.append(ticks - first)
        assert not policies.evaluate(to_port(9999)).allowed  # judged by the new state
        assert not policies.evaluate(to_port(20_000 + POLICIES - 1)).allowed
        assert policies.evaluate(to_port(8080)).allowed
        compiled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        nursery.start_soon(connection)
    assert inline > 0.005  # long enough for the loop to get the GIL during it
    # Compiled on the event loop, the compile would let nothing else run until it was done
    # (no tick); in the worker thread, the loop keeps running in the GIL's 5 ms slices (how
    # many of them it gets depends on the machine's load: one shows it was not blocked).
    assert during[0] >= 1
    assert compiler.compiles == 1 and state.cached_policies(server) is not None


async def test_connections_share_one_compile_and_never_get_a_stale_set() -> None:
    server = workload("server", "10.0.0.1")
    state = ProxyState()
    state.replace([server], [], many_policies())
    compiler = PolicyCompiler(state)
    got: list[PolicySet] = []

    async def connection() -> None:
        got.append(await compiler.policies_for(server))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(connection)
    assert compiler.compiles == 1 and len({id(s) for s in got}) == 1

    # A change while a compile runs: the compile's result is of the old state, so it is not
    # used; the waiting connection gets a set that includes the change.
    state.apply_delta(policies=[deny_port("first", 7000)])
    decided = []

    async def judged() -> None:
        policies = await compiler.policies_for(server)
        decided.append(policies.evaluate(to_port(7001)).allowed)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(judged)
        await trio.testing.wait_all_tasks_blocked()  # its compile runs in the worker thread
        state.apply_delta(policies=[deny_port("second", 7001)])
    assert decided == [False]
    assert compiler.compiles == 3  # the first set, the superseded one, the current one
    current = state.cached_policies(server)
    assert current is not None and not current.evaluate(to_port(7001)).allowed
