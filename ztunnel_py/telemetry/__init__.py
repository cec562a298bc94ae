"""Metric families with Istio's names and labels, and the access log."""
