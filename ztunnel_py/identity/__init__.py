"""Workload identities in practice: keys, CSRs, certificates, TLS contexts, rotation."""
