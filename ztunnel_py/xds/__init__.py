"""The consuming side of xDS: protobuf <-> model conversion, the Delta ADS client, and ztunnel's
local-config file (the other source of the same state)."""
