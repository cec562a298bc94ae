"""The node agent: app wiring, state store, enrollment, and the proxies."""
