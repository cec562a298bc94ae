"""Configuration people write in YAML, read with positions and checked against a schema.

The one way ztunnel_py validates YAML, shared by the control plane (Kubernetes resources) and the
xDS side (ztunnel's local-config file): `loading` reads YAML remembering where every value
starts and refuses what a person never means (duplicate keys, alias bombs); `schema` describes
the expected shapes as Python data and reports every problem of a document, each with its field
path and line/column; `durations` reads the Go-style durations (`15s`, `1m30s`) resources write.
Callers add where the document came from and decide what an error means
(reject a resource, refuse a file).
"""
