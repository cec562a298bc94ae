"""Trio transports shared by every side: TLS over MemoryBIO, HBONE connections, streams and
pool, byte relays, sockets inside pod namespaces, the gRPC channel to the control plane."""
