"""Workload identities in practice: keys, CSRs, certificates, TLS contexts, the certificate manager."""
