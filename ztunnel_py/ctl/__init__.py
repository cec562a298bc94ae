"""The operator's command line, as Istio users know it from istioctl: `ztunnel-py zc` (a node
agent's state, `istioctl ztunnel-config`), `ztunnel-py proxy-status` (the control plane's
clients) and `ztunnel-py waypoint generate|apply|list|delete` (`istioctl waypoint`).

A driver like `bench`: it reads the operator ports over HTTP (a node agent's admin port 15000,
the control plane's 15014) and reaches them inside a testbed's namespaces or at an address.
Rendering is in `tables.py`, without I/O.
"""
