"""The HTTP filter engine shared by waypoints and sidecar mode.

Sans-IO core: `message` (heads and headers), `events`, the codecs `h1` (over h11) and `h2` (over
h2), `routing` (route matching and request edits over `model.http`), `filter` (the filter API and
chain). Trio drivers: `connection` (server and client connections and their streams),
`upstream` (pooled upstream connections), `proxy` (one request through the filter chain to an
upstream and back).
"""
