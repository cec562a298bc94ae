"""The bundled control plane: sources, validation, translation, xDS server and the CA."""
