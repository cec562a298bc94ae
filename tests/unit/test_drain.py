"""Graceful shutdown: the termination deadline rule, and the drain's order of events (on trio's
virtual clock, so deadlines cost no real time)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
import trio.testing

from ztunnel_py.config import ConfigValueError, termination_deadline
from ztunnel_py.runtime.drain import Drain, Shutdown


@pytest.mark.parametrize(
    ("explicit", "grace", "expected"),
    [
        ("", "", 5.0),  # ztunnel's default
        ("12s", "", 12.0),
        ("500ms", "30", 0.5),  # an explicit deadline wins
        ("", "30", 25.0),  # Kubernetes' default grace period: 5 s left to exit
        ("", "11", 6.0),
        ("", "10", 9.0),  # 10 s or less: 1 s left
        ("", "1", 0.0),
        ("", "0", 0.0),
    ],
)
def test_termination_deadline_follows_ztunnel(explicit: str, grace: str, expected: float) -> None:
    assert termination_deadline(explicit, grace) == timedelta(seconds=expected)


@pytest.mark.parametrize(
    ("explicit", "grace", "message"),
    [
        ("soon", "", "--connection-termination-deadline: 'soon' is not a duration"),
        ("", "30s", "--termination-grace-period-seconds: '30s' is not a whole number"),
        ("", "-5", "--termination-grace-period-seconds: '-5' is not a whole number"),
    ],
)
def test_bad_termination_settings_say_which(explicit: str, grace: str, message: str) -> None:
    with pytest.raises(ConfigValueError, match=message):
        termination_deadline(explicit, grace)


async def test_accept_loops_stop_when_draining_starts_and_late_ones_never_run() -> None:
    drain = Drain()
    stopped: list[str] = []

    async def accept_loop(name: str) -> None:
        with drain.accepting():
            await trio.sleep_forever()
        stopped.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, "a")
        nursery.start_soon(accept_loop, "b")
        await trio.testing.wait_all_tasks_blocked()
        drain.start()
    assert sorted(stopped) == ["a", "b"]
    with drain.accepting():
        await trio.sleep_forever()  # cancelled at its first checkpoint
    drain.start()  # idempotent


async def test_wait_idle_waits_for_every_held_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    release = [trio.Event(), trio.Event()]

    async def connection(index: int) -> None:
        with drain.holding():
            await release[index].wait()

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(connection, index)
        await trio.testing.wait_all_tasks_blocked()
        assert drain.active == 2
        with trio.move_on_after(1) as waited:
            await drain.wait_idle()
        assert waited.cancelled_caught
        release[0].set()
        release[1].set()
        await drain.wait_idle()
        assert drain.active == 0


def shutdown_with(drain: Drain, deadline: float) -> tuple[Shutdown, list[str], trio.CancelScope]:
    events: list[str] = []
    scope = trio.CancelScope()

    def stop() -> None:
        events.append("stop")
        scope.cancel()

    shutdown = Shutdown(drain, deadline, on_drain=lambda: events.append("not ready"), stop=stop)
    return shutdown, events, scope


async def test_shutdown_ends_as_soon_as_the_last_connection_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    shutdown, events, scope = shutdown_with(drain, 5.0)

    async def connection() -> None:
        with drain.holding():
            await trio.sleep(2)

    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown.run)
            nursery.start_soon(connection)
            await trio.testing.wait_all_tasks_blocked()
            assert events == []
            shutdown.request("received SIGTERM")
            await trio.sleep_forever()
    assert events == ["not ready", "stop"]
    assert drain.started.is_set()
    assert trio.current_time() == pytest.approx(2.0)


async def test_shutdown_stops_at_the_deadline_and_a_second_request_stops_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drain = Drain()
    shutdown, events, scope = shutdown_with(drain, 5.0)

    async def stuck_connection() -> None:
        with drain.holding():
            await trio.sleep_forever()

    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown.run)
            nursery.start_soon(stuck_connection)
            shutdown.request("received SIGTERM")
            await trio.sleep_forever()
    assert events == ["not ready", "stop"]
    assert trio.current_time() == pytest.approx(5.0)

    drain = Drain()
    shutdown, events, scope = shutdown_with(drain, 5.0)
    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown.run)
            nursery.start_soon(stuck_connection)
            shutdown.request("received SIGTERM")
            await trio.sleep(1)
            shutdown.request("received SIGTERM")
            await trio.sleep_forever()
    assert events == ["not ready", "stop"]
    assert trio.current_time() == pytest.approx(6.0)
