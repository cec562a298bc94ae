"""Transparent capture of pod traffic with eBPF: the only code that touches bcc and netlink.

- `model`: per-pod settings and counters and their map encoding (pure; no bcc).
- `bpffs`: the BPF filesystem the programs and maps are pinned on.
- `podnet`: the routing, sysctl and tc setup inside a pod's netns (pyroute2).
- `loader`: `Redirector`, which compiles `bpf/redirect.c` once per agent and enrolls pods.
"""
