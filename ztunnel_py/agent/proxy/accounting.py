"""Run a proxied connection's relay and record its outcome in metrics and the access log.

Shared by every path (outbound, inbound HBONE, inbound plaintext) so the byte counts survive a
relay that fails half way, and every connection is closed in the books exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ztunnel_py.agent.proxy.hbone import HboneError
from ztunnel_py.agent.proxy.relay import RelayError
from ztunnel_py.telemetry.metrics import ConnectionMetrics


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
