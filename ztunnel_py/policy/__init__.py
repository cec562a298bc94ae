"""Authorization evaluation: Istio's policy semantics over one connection (and, at waypoints, one
request)."""
