"""Workload xDS: protobuf conversion, the control plane's Delta ADS server, the agent's client."""
