"""Run a proxied connection's relay and record its outcome in metrics and the access log.

Shared by every path (outbound, inbound HBONE, inbound plaintext) so the byte counts survive a
relay that fails half way, and every connection is closed in the books exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ztunnel_py.policy.rbac import Connection
from ztunnel_py.telemetry.metrics import ConnectionMetrics
from ztunnel_py.transport.hbone import HboneError
from ztunnel_py.transport.relay import RelayError

POLICY_CHANGE = "connection closed due to policy change"


class Tracker(Protocol):
    """Registers a live connection (for /config_dump and late policy enforcement); the result
    unregisters it. Inbound connections pass what authorization judged (`authz`) and a scope
    that closes them if a policy change now denies them."""

    def __call__(
        self,
        direction: str,
        src: str,
        dst: str,
        protocol: str,
        authz: Connection | None = None,
        scope: trio.CancelScope | None = None,
    ) -> Callable[[], None]: ...


async def carry(
    conn: ConnectionMetrics,
    transfer: Awaitable[tuple[int, int]],
    *,
    a_is_peer: bool,
    untrack: Callable[[], None] | None = None,
    already_sent: int = 0,
) -> None:
    """Await `transfer` (a relay returning (bytes a->b, bytes b->a)) and account for it.

    `a_is_peer`: side a is the far end of the mesh connection (inbound), so a->b is what this
    proxy received; otherwise side a is the local client (outbound) and a->b is what it sent.
    """
    error: str | None = None
    try:
        a_to_b, b_to_a = await transfer
    except RelayError as e:
        a_to_b, b_to_a, error = e.a_to_b, e.b_to_a, str(e)
    except (HboneError, OSError) as e:
        a_to_b, b_to_a, error = 0, 0, str(e)
    finally:
        if untrack is not None:
            untrack()
    if a_is_peer:
        conn.add_bytes(sent=b_to_a + already_sent, recv=a_to_b)
    else:
        conn.add_bytes(sent=a_to_b + already_sent, recv=b_to_a)
    if error is None:
        conn.close()
    else:
        conn.close("CONNECT", error)


async def carry_enforced(
    conn: ConnectionMetrics,
    transfer: Awaitable[tuple[int, int]],
    track: Tracker,
    description: tuple[str, str, str, str],
    authz: Connection,
    still_allowed: Callable[[], Awaitable[bool]],
) -> None:
    """`carry` an inbound connection that a later policy change may close (late enforcement).

    `still_allowed` judges the connection again under the current policies, once it is tracked:
    a change that came between the first judgement and the tracking was rechecked without this
    connection, so without a second look it would carry on under policies that deny it."""
    scope = trio.CancelScope()
    untrack = track(*description, authz=authz, scope=scope)
    with scope:
        if not await still_allowed():
            scope.cancel()  # the transfer starts cancelled: its sockets close, nothing relayed
        await carry(conn, transfer, a_is_peer=True, untrack=untrack)
    if scope.cancelled_caught:
        untrack()
        conn.close("DENY", POLICY_CHANGE)
