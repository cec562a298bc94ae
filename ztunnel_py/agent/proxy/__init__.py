"""The agent's data plane: outbound, inbound HBONE, inbound plaintext, SOCKS5, pool, relay."""
