"""Reaching an operator port: by testbed name (inside that node's, or the control plane's,
network namespace) or at HOST:PORT from here."""

from __future__ import annotations

import http.client
import json
from typing import Any

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import ADMIN_PORT
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.testbed import Testbed

TIMEOUT = 10.0


class FetchError(Exception):
    """The port did not answer as expected; the text says where and why."""


def _request(address: SocketAddr, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(str(address.host), address.port, timeout=TIMEOUT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(f"{method} http://{address}{path}: {e}") from None
    finally:
        conn.close()


def request(target: str, method: str, path: str, *, prefix: str, port: int = ADMIN_PORT) -> bytes:
    """`method path` on `target`: a testbed node name or `controlplane` (its namespace, at
    127.0.0.1:`port` or the control plane's monitoring address), or HOST:PORT."""
    if ":" in target:
        try:
            address = SocketAddr.parse(target, hostname=True)
        except ValueError as e:
            raise FetchError(str(e)) from None
        status, body = _request(address, method, path)
    else:
        try:
            bed = Testbed.attach(prefix)
        except TestbedError as e:
            raise FetchError(f"{target!r} is not HOST:PORT, and {e}") from None
        if target == "controlplane":
            netns = bed.topology.cp_netns
            address = bed.topology.controlplane_monitoring
        else:
            try:
                netns = bed.netns_of(target)
            except TestbedError as e:
                raise FetchError(str(e)) from None
            address = SocketAddr("127.0.0.1", port)
        status, body = namespaces.run_in(netns, lambda: _request(address, method, path))
    if status != 200:
        raise FetchError(f"{method} {path} on {target}: HTTP {status}: {body[:300]!r}")
    return body


def get_json(target: str, path: str, *, prefix: str, port: int = ADMIN_PORT) -> Any:
    body = request(target, "GET", path, prefix=prefix, port=port)
    try:
        return json.loads(body)
    except ValueError as e:
        raise FetchError(f"GET {path} on {target} is not JSON: {e}") from None
