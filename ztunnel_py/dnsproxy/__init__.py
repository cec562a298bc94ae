"""The DNS proxy every enrolled pod's captured DNS reaches, as ztunnel's `src/dns/`.

Sans-IO core: `resolver` (the mesh's answers, the aliases and search-domain expansion, message
parsing and truncation). Trio: `server` (a pod's UDP and TCP sockets on 15053, answering from
the original destination, forwarding the rest to the upstream resolvers, metrics and the DNS
access log).
"""
