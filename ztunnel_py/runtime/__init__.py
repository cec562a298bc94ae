"""What every proxy process shares (node agent, sidecar, waypoint): configuration from flags,
the certificate/xDS/pool/operator-server runtime (`proxy`), graceful drain (`drain`)."""
