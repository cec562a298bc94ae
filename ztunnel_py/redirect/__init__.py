"""Transparent capture of pod traffic with eBPF: the only code that touches bcc and netlink.

- `maps`: per-pod settings and counters and their encoding into the BPF maps (pure; no bcc).
- `bpffs`: the BPF filesystem the programs and maps are pinned on.
- `podnet`: the routing, sysctl and tc setup inside a pod's netns (pyroute2).
- `compile`: builds, loads and pins `bpf/redirect.c` with bcc in a short-lived child process,
  so the agent process never loads bcc and its compiler.
- `bpfsys`: the bpf(2) calls (pinned objects, map elements) the agent uses instead of bcc.
- `loader`: `Redirector`, which has the programs compiled once per agent and enrolls pods.
"""
