"""Progressive delivery (`ztunnel-py canary`): a controller that releases a new version behind a
Flagger-shaped `Canary` (shadow traffic, a small canary weight, stepped increases, promotion),
gated at every step by the waypoints' metrics read from Prometheus with PromQL, rolling back
to the stable weights when a gate fails.

A side of its own: it talks to Prometheus over HTTP (`telemetry/promql.py`) and to the mesh's
configuration only through `store.Resources` (the CLI wires a testbed's watched directory), so
it imports no agent, control plane, waypoint or testbed code. The release logic is sans-IO
(`analysis.py`, `metrics.py` given a query function, `routes.py`, `report.py`); `controller.py`
is the trio driver.
"""
