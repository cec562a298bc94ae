"""Processes the testbed runs inside its namespaces, tracked so `down` stops exactly them.

A process is identified by its pid and its start time (field 22 of /proc/<pid>/stat, fixed at
fork and unchanged by exec), so a recycled pid is never mistaken for ours. Each process starts
as `nsenter --net=/run/netns/<ns> -- argv...` (nsenter execs argv, so the pid stays the same) in
a new session, with stdin from /dev/null and stdout+stderr appended to its log file, and outlives
`testbed up`. nsenter rather than `ip netns exec`: only the network namespace changes, so the
process keeps the machine's mounts (`ip netns exec` gives it a private /sys without the bpffs on
which the agent pins its BPF objects for a restarted agent to find).

A record is written to the state file before the process starts; if `up` is killed in the gap
before its pid is written, `down` finds it among the namespace's processes by its command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError


@dataclass(slots=True)
class ProcessRecord:
    """One tracked process: what runs, where, where it logs, and (once started) who it is."""

    name: str
    netns: str
    argv: list[str]
    log: str
    pid: int | None = None
    start_time: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "netns": self.netns,
            "argv": self.argv,
            "log": self.log,
            "pid": self.pid,
            "start_time": self.start_time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            netns=str(data["netns"]),
            argv=[str(a) for a in data["argv"]],
            log=str(data["log"]),
            pid=data.get("pid"),
            start_time=data.get("start_time"),
        )

    @property
    def launch_argv(self) -> list[str]:
        return ["nsenter", f"--net={namespaces.netns_path(self.netns)}", "--", *self.argv]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of `pid`, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def start(record: ProcessRecord) -> None:
    """Start the process described by `record` and fill in its pid, start time and Popen."""
    os.makedirs(os.path.dirname(record.log), exist_ok=True)
    with open(record.log, "ab") as log:
        popen = subprocess.Popen(
            record.launch_argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stat = _stat(popen.pid)
    record.pid = popen.pid
    record.start_time = stat[1] if stat else None
    record.popen = popen


def is_alive(record: ProcessRecord) -> bool:
    """True if the recorded process still runs (a zombie counts as exited)."""
    if record.pid is None:
        return False
    if record.popen is not None and record.popen.poll() is not None:
        return False
    stat = _stat(record.pid)
    return stat is not None and stat[0] != "Z" and stat[1] == record.start_time


def exit_code(record: ProcessRecord) -> int | None:
    """The exit status if this process is our child and has exited, else None."""
    return record.popen.poll() if record.popen is not None else None


def find_unrecorded(record: ProcessRecord) -> None:
    """Fill in pid and start time of a process started just before `up` died, if it runs."""
    wanted = (record.argv, record.launch_argv)
    for pid in namespaces.pids(record.netns):
        if _cmdline(pid) in wanted:
            stat = _stat(pid)
            if stat is not None:
                record.pid, record.start_time = pid, stat[1]
                return


def _signal(record: ProcessRecord, sig: signal.Signals) -> None:
    assert record.pid is not None
    # Each process leads its own session and process group (start_new_session), so the group
    # signal also reaches helpers it forked. Fall back to the pid if it left its group.
    try:
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)
    except ProcessLookupError:
        pass


def kill(record: ProcessRecord, timeout: float = 5.0) -> None:
    """SIGKILL the process (and its group) and wait until it is gone."""
    _signal(record, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.02)
    if is_alive(record):
        raise TestbedError(f"{record.name} (pid {record.pid}) survived SIGKILL for {timeout} s")


# Longer than a proxy's default termination deadline (5 s): a draining agent or sidecar gets to
# close its remaining connections itself before SIGKILL.
STOP_GRACE = 8.0


def stop(records: list[ProcessRecord], grace: float = STOP_GRACE) -> list[str]:
    """SIGTERM every live record, SIGKILL what is left after `grace` seconds.

    Our own children are reaped through their Popen (inside `is_alive`); other processes count
    as stopped once they are zombies, since their exit status belongs to whoever reaps them.
    Returns the names of processes that were still running when we got to them.
    """
    live = [r for r in records if is_alive(r)]
    for record in live:
        _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(is_alive(r) for r in live) and time.monotonic() < deadline:
        time.sleep(0.02)
    for record in live:
        if is_alive(record):
            _signal(record, signal.SIGKILL)
    # SIGKILL cannot be ignored, but a process stuck in the kernel dies only when it leaves it.
    deadline = time.monotonic() + grace
    while any(is_alive(r) for r in live) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [r.name for r in live]


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (log is empty)"


def wait_for(
    check: Callable[[], bool],
    watched: Sequence[ProcessRecord],
    timeout: float,
    what: str,
) -> None:
    """Poll `check` until it holds; fail early, with its log, if a watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        for record in watched:
            if not is_alive(record):
                code = exit_code(record)
                how = f" with status {code}" if code is not None else ""
                raise TestbedError(
                    f"{record.name} exited{how} while waiting for {what}; "
                    f"last lines of {record.log}:\n" + log_tail(record.log)
                )
        if time.monotonic() > deadline:
            tails = "".join(f"\nlast lines of {r.log}:\n{log_tail(r.log)}" for r in watched)
            raise TestbedError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")
        time.sleep(0.05)
