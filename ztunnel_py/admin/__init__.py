"""Operator endpoints: admin (:15000), metrics (:15020) and readiness (:15021) servers."""

from ztunnel_py.admin.admin import ConfigDump, serve_admin
from ztunnel_py.admin.metrics import serve_metrics
from ztunnel_py.admin.readiness import Readiness, serve_readiness

__all__ = ["ConfigDump", "Readiness", "serve_admin", "serve_metrics", "serve_readiness"]
