"""The mesh's well-known ports and the mark on the agent's own packets, defined once for every
layer (the capture programs get them as compiler flags from `redirect/compile.py`).

| port  | where                          | what                                              |
|-------|--------------------------------|---------------------------------------------------|
| 15001 | each enrolled pod's netns      | captured outbound connections                     |
| 15006 | each enrolled pod's netns      | inbound plaintext (non-mesh clients)              |
| 15008 | each enrolled pod's netns      | inbound HBONE (mTLS + HTTP/2 CONNECT)             |
| 15080 | each pod's netns, 127.0.0.1    | SOCKS5, explicit proxying into the mesh           |
| 15053 | each pod's netns, 127.0.0.1/::1| DNS proxy, UDP and TCP (captured port-53 traffic) |
| 15000 | agent, localhost               | admin: /config_dump, /logging, /quitquitquit      |
| 15020 | agent                          | Prometheus /metrics                               |
| 15021 | agent                          | /healthz/ready                                    |
| 15012 | control plane                  | gRPC over TLS: Delta ADS and the CA service       |
| 15014 | control plane                  | HTTP: /ready, /metrics, debug views               |

Every socket the agent opens inside a pod's netns carries `SO_MARK` `PACKET_MARK` (Istio's
0x539), which the capture programs let pass, so the agent never captures its own traffic.
"""

from __future__ import annotations

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
HBONE_PORT = 15008
SOCKS5_PORT = 15080
DNS_PORT = 15053

ADMIN_PORT = 15000
METRICS_PORT = 15020
READINESS_PORT = 15021

CONTROL_PLANE_PORT = 15012
CONTROL_PLANE_MONITORING_PORT = 15014

# The listeners the capture programs assign pod traffic to; a pod cannot exclude them.
CAPTURE_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})
# Every listener of the agent in a pod: a pod dialling one of them through the mesh would loop.
POD_LISTENER_PORTS = CAPTURE_PORTS | {SOCKS5_PORT, DNS_PORT}

PACKET_MARK = 0x539
