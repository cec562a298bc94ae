"""The engine's built-in filters: end-user authentication (`jwt`), authorization (`authz`),
request ids and trace context (`tracing`), fault injection (`fault`), request metrics and the
access log (`telemetry`).

Each is a `Filter` configured by the app that builds the chain (the waypoint from its xDS
configuration); user filters installed as packages sit beside them (see `http.filter`).
"""
