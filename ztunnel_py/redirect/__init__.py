"""The only code that touches bcc and netlink: loads bpf/ and attaches it in pod namespaces."""
