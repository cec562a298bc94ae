"""What a process has cost so far, read from /proc: CPU seconds and resident memory."""

from __future__ import annotations

import os


def cpu_times(pid: int) -> tuple[float, float]:
    """The user and the system CPU seconds `pid` has used ((0.0, 0.0) once it is gone): Python
    and the rest of user space on one side, the kernel working for it (syscalls, the TCP stack
    it drives, TLS's copies) on the other."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # utime and stime are fields 14 and 15 of stat; after the ")" they are at 11 and 12.
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used (0.0 once it is gone)."""
    return sum(cpu_times(pid))


def _kib_field(path: str, name: str) -> int:
    """The `name:  N kB` line of a /proc file, in bytes; 0 when the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS)."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS:")


def pss_bytes(pid: int) -> int:
    """Proportional set size of `pid`: its resident memory with every shared page divided among
    the processes mapping it, so a sum over processes counts shared libraries once."""
    return _kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")
