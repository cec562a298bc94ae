"""DestinationRule `trafficPolicy` (top level, per subset, and per port in `portLevelSettings`),
checked as Istio's validation (`validateTrafficPolicy`) and its CRD check it, so translation
can trust every value it reads and a mistake is rejected with its field path while the last good
version keeps serving:

- a policy, a connection pool and a port-level setting need at least one field;
- `loadBalancer`: `simple` (UNSPECIFIED, LEAST_CONN, RANDOM, PASSTHROUGH, ROUND_ROBIN,
  LEAST_REQUEST) or `consistentHash`, not both; a consistent hash takes exactly one key
  (`httpHeaderName` and `httpQueryParameterName` not empty, `httpCookie` with a `name`,
  `useSourceIp`), and at most one of `ringHash`, `maglev` and the deprecated
  `minimumRingSize`; a Maglev table size is a prime below 5000011;
- connection pool limits are not negative; its durations and outlier detection's `interval`
  and `baseEjectionTime` are at least 1 ms, in whole milliseconds;
- `maxEjectionPercent`, `minHealthPercent` and `retryBudget.percent` are within 0-100;
- `portLevelSettings` entries name their `port.number`, each port once.

Fields a waypoint does not apply (TLS settings, locality, warm-up, keepalives...) are accepted
here and reported by translation.
"""

from __future__ import annotations

from collections.abc import Mapping

from ztunnel_py.model.http import MAX_MAGLEV_SIZE, MAX_RING_SIZE, valid_maglev_size
from ztunnel_py.yamlschema.durations import DURATION, MS_DURATION
from ztunnel_py.yamlschema.schema import (
    ANY,
    BOOL,
    PORT,
    STR,
    Checker,
    Hook,
    Int,
    ListOf,
    Node,
    Number,
    Str,
    obj,
)

__all__ = ["HASH_KEYS", "SIMPLE_LOAD_BALANCERS", "TRAFFIC_POLICY"]

SIMPLE_LOAD_BALANCERS = (
    "UNSPECIFIED",
    "LEAST_CONN",
    "RANDOM",
    "PASSTHROUGH",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
)
HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")
_UINT32 = 2**32 - 1


def _not_empty(text: str) -> str | None:
    return "must not be empty" if not text.strip() else None


def _header_name(text: str) -> str | None:
    if not text.strip():
        return "must not be empty: name the header whose value is hashed"
    if any(ch in text for ch in " \t:") and not text.startswith(":"):
        return f"{text!r} is not a header name"
    return None


def _count(what: str) -> Int:
    return Int(0, _UINT32, what)


def _at_least_one(what: str, besides: str = "") -> Hook:
    def hook(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
        if not [k for k in fields if k != besides]:
            c.error(
                node,
                f"{what} must have at least one field" + (f" besides {besides}" if besides else ""),
            )

    return hook


def _exactly_one_key(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    present = [k for k in HASH_KEYS if k in fields]
    if not present:
        c.error(node, f"a consistent hash needs one of {', '.join(HASH_KEYS)}")
    elif len(present) > 1:
        c.error(fields[present[1]], f"{present[1]} cannot be combined with {present[0]}")
    algorithms = [k for k in ("ringHash", "maglev", "minimumRingSize") if k in fields]
    if len(algorithms) > 1:
        c.error(fields[algorithms[1]], f"{algorithms[1]} cannot be combined with {algorithms[0]}")


def _maglev_size(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "tableSize" not in fields:
        c.error(node.missing("tableSize"), "tableSize must be set for maglev")
        return
    size = fields["tableSize"].value
    if not valid_maglev_size(size):
        c.error(fields["tableSize"], f"{size} is not a prime number below {MAX_MAGLEV_SIZE}")


def _one_of_simple_or_hash(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "simple" in fields and "consistentHash" in fields:
        c.error(fields["consistentHash"], "consistentHash cannot be combined with simple")


def _percent_value(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    value = fields["percent"].value if "percent" in fields else None
    if isinstance(value, int | float) and not 0 <= value <= 100:
        c.error(fields["percent"], f"{value} is not within 0-100")


HTTP_COOKIE = obj(
    {
        "name": Str(checks=(_not_empty,)),
        "path": STR,
        "ttl": DURATION,
        "attributes": ListOf(obj({"name": STR, "value": STR}, required=("name",))),
    },
    required=("name",),
)
CONSISTENT_HASH = obj(
    {
        "httpHeaderName": Str(checks=(_header_name,)),
        "httpCookie": HTTP_COOKIE,
        "useSourceIp": BOOL,
        "httpQueryParameterName": Str(checks=(_not_empty,)),
        "ringHash": obj({"minimumRingSize": Int(0, MAX_RING_SIZE, "minimumRingSize")}),
        "maglev": obj({"tableSize": Int(0, None, "tableSize")}, hooks=(_maglev_size,)),
        "minimumRingSize": Int(0, MAX_RING_SIZE, "minimumRingSize"),
    },
    hooks=(_exactly_one_key,),
)
LOAD_BALANCER = obj(
    {
        "simple": Str(choices=SIMPLE_LOAD_BALANCERS),
        "consistentHash": CONSISTENT_HASH,
        "localityLbSetting": ANY,
        "warmupDurationSecs": DURATION,
        "warmup": ANY,
    },
    hooks=(_one_of_simple_or_hash,),
)
CONNECTION_POOL = obj(
    {
        "tcp": obj(
            {
                "maxConnections": _count("maxConnections"),
                "connectTimeout": MS_DURATION,
                "tcpKeepalive": obj(
                    {"probes": _count("probes"), "time": MS_DURATION, "interval": MS_DURATION}
                ),
                "maxConnectionDuration": MS_DURATION,
                "idleTimeout": MS_DURATION,
            }
        ),
        "http": obj(
            {
                "http1MaxPendingRequests": _count("http1MaxPendingRequests"),
                "http2MaxRequests": _count("http2MaxRequests"),
                "maxRequestsPerConnection": _count("maxRequestsPerConnection"),
                "maxRetries": _count("maxRetries"),
                "idleTimeout": MS_DURATION,
                "h2UpgradePolicy": Str(choices=("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")),
                "useClientProtocol": BOOL,
                "maxConcurrentStreams": _count("maxConcurrentStreams"),
            }
        ),
    },
    hooks=(_at_least_one("a connection pool"),),
)
OUTLIER_DETECTION = obj(
    {
        "consecutiveErrors": _count("consecutiveErrors"),
        "splitExternalLocalOriginErrors": BOOL,
        "consecutiveLocalOriginFailures": _count("consecutiveLocalOriginFailures"),
        "consecutiveGatewayErrors": _count("consecutiveGatewayErrors"),
        "consecutive5xxErrors": _count("consecutive5xxErrors"),
        "interval": MS_DURATION,
        "baseEjectionTime": MS_DURATION,
        "maxEjectionPercent": Int(0, 100, "maxEjectionPercent"),
        "minHealthPercent": Int(0, 100, "minHealthPercent"),
    }
)
RETRY_BUDGET = obj(
    {"percent": Number(), "minRetryConcurrency": _count("minRetryConcurrency")},
    hooks=(_percent_value,),
)
PORT_TRAFFIC_POLICY = obj(
    {
        "port": obj({"number": PORT}, required=("number",)),
        "loadBalancer": LOAD_BALANCER,
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": ANY,
    },
    required=("port",),
    hooks=(_at_least_one("a port-level setting", "port"),),
)
TRAFFIC_POLICY = obj(
    {
        "loadBalancer": LOAD_BALANCER,
        "connectionPool": CONNECTION_POOL,
        "outlierDetection": OUTLIER_DETECTION,
        "tls": ANY,
        "portLevelSettings": ListOf(
            PORT_TRAFFIC_POLICY,
            unique_by=lambda p: (p.get("port") or {}).get("number"),
            unique_what="port",
        ),
        "tunnel": ANY,
        "proxyProtocol": ANY,
        "retryBudget": RETRY_BUDGET,
    },
    hooks=(_at_least_one("a traffic policy"),),
)
