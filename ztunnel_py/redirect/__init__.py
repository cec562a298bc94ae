"""Transparent capture of pod traffic with eBPF: the only code that touches bcc and netlink.

- `maps`: per-pod settings and counters and their encoding into the BPF maps (pure; no bcc).
- `bpffs`: the BPF filesystem the programs and maps are pinned on.
- `podnet`: the routing, sysctl and tc setup inside a pod's netns (pyroute2).
- `bundle`: the bytecode bundle's format (pure): the compiled programs, loadable without bcc.
- `compile`: compiles `bpf/redirect.c` with bcc into a bundle in a short-lived child process
  (on the image's build host, or on a node without a matching bundle), and finds the bundle
  that matches the sources, so neither the agent process nor the image carries the compiler.
- `programs`: loads a bundle's maps and programs and pins them, or reuses the pins.
- `bpfsys`: the bpf(2) calls (maps, programs, pins, map elements) the agent uses instead of bcc.
- `loader`: `Redirector`, which has the programs loaded once per agent and enrolls pods.
"""
