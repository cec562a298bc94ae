"""Our .proto files (wire-compatible with Istio's) and the modules generated from them."""
