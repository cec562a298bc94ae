"""What `ztunnel-py zc` and `ztunnel-py proxy-status` print, without I/O: a node agent's
`/config_dump` (or the control plane's `/debug/xds`) in, rows out, in the tables
`istioctl ztunnel-config` and `istioctl proxy-status` print.

- workloads: NAMESPACE, POD NAME, ADDRESS, NODE, WAYPOINT, PROTOCOL
- services: NAMESPACE, SERVICE NAME, SERVICE VIP, WAYPOINT, ENDPOINTS (healthy/total)
- policies: NAMESPACE, POLICY NAME, ACTION, SCOPE
- certificates: CERTIFICATE NAME, TYPE (Leaf, Intermediate, Root), STATUS, VALID CERT,
  SERIAL NUMBER, NOT AFTER, NOT BEFORE; one row per certificate of each identity's chain
- connections: WORKLOAD, DIRECTION, LOCAL, REMOTE, REMOTE TARGET, PROTOCOL; addresses shown as
  the workload that has them (`name.namespace`) unless `raw`
- proxy-status: NAME, TYPE, NODE, then per served type its ACK state (`ACKED`, `NACKED`,
  `STALE` while a push is unanswered, `-` when not subscribed), and CONNECTED (since when)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Row = tuple[str, ...]

WORKLOAD_COLUMNS = ("NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL")
SERVICE_COLUMNS = ("NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS")
POLICY_COLUMNS = ("NAMESPACE", "POLICY NAME", "ACTION", "SCOPE")
CERTIFICATE_COLUMNS = (
    "CERTIFICATE NAME",
    "TYPE",
    "STATUS",
    "VALID CERT",
    "SERIAL NUMBER",
    "NOT AFTER",
    "NOT BEFORE",
)
CONNECTION_COLUMNS = ("WORKLOAD", "DIRECTION", "LOCAL", "REMOTE", "REMOTE TARGET", "PROTOCOL")
XDS_TYPES = ("Address", "Authorization", "HttpService", "HttpAuthorization")
PROXY_STATUS_COLUMNS = ("NAME", "TYPE", "NODE", *(t.upper() for t in XDS_TYPES), "CONNECTED")


def render(columns: Sequence[str], rows: Iterable[Row]) -> str:
    """A table as istioctl prints it: left-aligned columns, two spaces apart."""
    table = [tuple(columns), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def _waypoint(entry: Mapping[str, Any]) -> str:
    waypoint = entry.get("waypoint")
    return str(waypoint.get("destination", "None")) if isinstance(waypoint, Mapping) else "None"


def workload_rows(dump: Mapping[str, Any]) -> list[Row]:
    rows = [
        (
            str(w.get("namespace", "")),
            str(w.get("name", "")),
            ",".join(w.get("workloadIps") or []) or "None",
            str(w.get("node", "")) or "None",
            _waypoint(w),
            str(w.get("protocol", "")),
        )
        for w in dump.get("workloads") or []
    ]
    return sorted(rows)


def service_rows(dump: Mapping[str, Any]) -> list[Row]:
    rows = []
    for s in dump.get("services") or []:
        endpoints = (s.get("endpoints") or {}).values()
        healthy = sum(1 for e in endpoints if e.get("status") == "Healthy")
        rows.append(
            (
                str(s.get("namespace", "")),
                str(s.get("name", "")),
                ",".join(_vip(v) for v in s.get("vips") or []) or "None",
                _waypoint(s),
                f"{healthy}/{len(endpoints)}",
            )
        )
    return sorted(rows)


def _vip(vip: str) -> str:
    """`network/IP` as dumped; the IP alone on the default (empty) network."""
    return vip.removeprefix("/")


def policy_rows(dump: Mapping[str, Any]) -> list[Row]:
    rows = [
        (
            str(p.get("namespace", "")),
            str(p.get("name", "")),
            str(p.get("action", "")),
            str(p.get("scope", "")),
        )
        for p in dump.get("policies") or []
    ]
    return sorted(rows)


def _valid(cert: Mapping[str, Any], now: datetime) -> bool:
    try:
        start = datetime.fromisoformat(str(cert["validFrom"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(cert["expirationTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return False
    return start <= now <= end


def certificate_rows(dump: Mapping[str, Any], now: datetime | None = None) -> list[Row]:
    now = now or datetime.now(UTC)
    rows: list[Row] = []
    for entry in dump.get("certificates") or []:
        identity = str(entry.get("identity", ""))
        status = str(entry.get("state", "")).split(":")[0]
        chain = list(entry.get("certChain") or [])
        roots = list(entry.get("rootCerts") or [])
        if not chain and not roots:
            rows.append((identity, "NA", status, "false", "NA", "NA", "NA"))
            continue
        kinds = ["Leaf", *["Intermediate"] * (len(chain) - 1)] + ["Root"] * len(roots)
        for kind, cert in zip(kinds, chain + roots, strict=True):
            rows.append(
                (
                    identity,
                    kind,
                    status,
                    str(_valid(cert, now)).lower(),
                    str(cert.get("serialNumber", "")),
                    str(cert.get("expirationTime", "")),
                    str(cert.get("validFrom", "")),
                )
            )
    return rows


def _names(dump: Mapping[str, Any]) -> dict[str, str]:
    """IP -> `name.namespace` of the workload that has it."""
    names: dict[str, str] = {}
    for w in dump.get("workloads") or []:
        for ip in w.get("workloadIps") or []:
            names[str(ip)] = f"{w.get('name')}.{w.get('namespace')}"
    return names


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def connection_rows(
    dump: Mapping[str, Any], direction: str | None = None, raw: bool = False
) -> list[Row]:
    names = {} if raw else _names(dump)

    def show(address: str) -> str:
        return names.get(_host(address), address)

    rows = []
    for state in (dump.get("workloadState") or {}).values():
        info = state.get("info") or {}
        workload = f"{info.get('name')}.{info.get('namespace')}"
        for way, conns in (state.get("connections") or {}).items():
            if direction is not None and way != direction:
                continue
            for c in conns:
                src, actual, original = (
                    c.get("src", ""),
                    c.get("actualDst", ""),
                    c.get("originalDst", ""),
                )
                local, remote = (actual, src) if way == "inbound" else (src, actual)
                rows.append(
                    (
                        workload,
                        way,
                        show(local),
                        show(remote),
                        show(original),
                        str(c.get("protocol", "")),
                    )
                )
    return sorted(rows)


def _ack_state(t: Mapping[str, Any] | None) -> str:
    if t is None:
        return "-"
    if t.get("lastNack") is not None and t.get("lastNack", {}).get("nonce") == t.get("lastNonce"):
        return "NACKED"
    if t.get("pendingNonces"):
        return "STALE"
    return "ACKED" if t.get("ackedNonce") else "SENT"


def proxy_status_rows(debug: Mapping[str, Any]) -> list[Row]:
    rows = []
    for client in debug.get("clients") or []:
        node_id = str(client.get("nodeId", ""))
        parts = node_id.split("~")
        name = parts[2] if len(parts) >= 3 else node_id or str(client.get("peer", ""))
        kind = parts[0] if len(parts) >= 3 else "unknown"
        short = {_short(url): state for url, state in (client.get("types") or {}).items()}
        rows.append(
            (
                name,
                kind,
                str(client.get("node", "")),
                *(_ack_state(short.get(t)) for t in XDS_TYPES),
                str(client.get("connectedAt", "")),
            )
        )
    return sorted(rows)


def _short(type_url: str) -> str:
    """`type.googleapis.com/istio.workload.Address` -> `Address`; our L7 types likewise."""
    return type_url.rsplit(".", 1)[-1]
