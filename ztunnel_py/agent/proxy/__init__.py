"""The agent's proxies: outbound, inbound HBONE and plaintext, SOCKS5, and their accounting."""
