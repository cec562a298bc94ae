"""Where configuration comes from: a watched directory of YAML (`files`), the Kubernetes API
(`kube`), and ztunnel's local-config file (`localconfig`). Each feeds documents to a store."""
