"""ztunnel_py: an Istio-ambient-style service mesh whose node agent is written in Python."""

__version__ = "0.1.0"
