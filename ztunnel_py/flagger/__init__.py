"""Flagger's `flagger.app` resources as ztunnel_py reads them: the `Canary` format (its schema in
the yamlschema language and the typed values a controller works with, `canary.py`).

A shared layer, because two sides read the same format: the control plane validates Canary
objects in its configuration like every other kind (`controlplane/validation/flagger.py`), and
the canary controller (`canary/`) reads them to run the release. No I/O.
"""
