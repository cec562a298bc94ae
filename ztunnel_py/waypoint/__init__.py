"""`ztunnel-py waypoint run`: the L7 proxy a namespace's (or a service's) traffic is sent through.

HBONE in on 15008 (the client's certificate is the source identity), each tunnel's bytes through
the shared HTTP filter engine (`ztunnel_py.http`): routing by the service's HTTPRoute or
VirtualService, L7 authorization, resilience, telemetry; then HBONE out (pooled) to the chosen
endpoint's node agent. TCP ports are proxied at L4. Configuration comes over the control plane's
Delta ADS stream: the workload API (where services and endpoints are) and our L7 types.
"""
