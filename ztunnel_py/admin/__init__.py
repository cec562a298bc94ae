"""Operator endpoints: admin (:15000), metrics (:15020) and readiness (:15021) servers."""
