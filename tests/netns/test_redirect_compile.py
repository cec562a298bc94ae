"""The capture programs are built in a child process and used through bpf(2) (real kernel).

No network namespace is needed: everything is pinned on a bpffs mounted on a temporary directory for
this module and unmounted afterwards (the `bpffs` and `pin_dir` fixtures).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztunnel_py.redirect import bpfsys
from ztunnel_py.redirect.compile import (
    MODULE,
    PROGRAMS,
    CompileReport,
    compile_and_pin,
    packaged_sources,
    read_stamp,
    write_stamp,
)
from ztunnel_py.redirect.loader import LAYOUT_VERSION, CountersMap, PodsMap, Redirector
from ztunnel_py.redirect.maps import (
    AddrKey,
    PodAddresses,
    PodConfigStruct,
    PodCounters,
    PodCountersStruct,
    PodSettings,
    RedirectError,
    addr_key,
    decode_addresses,
    encode_config,
)

pytestmark = pytest.mark.netns

BPF_NOEXIST = 1


@pytest.fixture(scope="module")
def compiled(bpffs: Path) -> Iterator[tuple[Path, CompileReport]]:
    """Programs and maps pinned once for the map tests."""
    path = bpffs / "shared"
    path.mkdir()
    try:
        yield path, compile_and_pin(path)
    finally:
        for pin in path.iterdir():
            pin.unlink()
        path.rmdir()


def compile_children() -> list[int]:
    """Pids of compiler processes started by this test process (running or zombie)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and MODULE.encode() in cmdline:
            found.append(int(entry.name))
    return found


def pinned_programs(pin_dir: Path) -> dict[str, tuple[str, int]]:
    """(tag, kernel id) of each pinned program."""
    found = {}
    for name, spec in PROGRAMS.items():
        fd = bpfsys.open_program(pin_dir / name, spec.prog_type)
        try:
            found[name] = (bpfsys.program_tag(fd), bpfsys.program_id(fd))
        finally:
            os.close(fd)
    return found


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_agent_process_never_loads_bcc(bpffs: Path) -> None:
    """What `ztunnel-py agent` does at start, in a fresh interpreter: no bcc, no LLVM."""
    script = (
        "import json, sys\n"
        "from ztunnel_py.redirect.loader import Redirector\n"
        f"r = Redirector({str(bpffs / 'agent')!r})\n"
        "libs = sorted({line.split()[-1] for line in open('/proc/self/maps')\n"
        "               if 'LLVM' in line or 'clang' in line or 'libbcc' in line})\n"
        "print(json.dumps({'bcc': sorted(m for m in sys.modules if m.split('.')[0] == 'bcc'),\n"
        "                  'libs': libs, 'programs': sorted(r.programs)}))\n"
        "r.close()\n"
        "r.remove_pins()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "bcc": [],
        "libs": [],
        "programs": ["egress", "ingress", "lookup"],
    }
    (bpffs / "agent").rmdir()


def test_unchanged_programs_are_reused_and_changed_ones_replaced(
    pin_dir: Path, tmp_path: Path
) -> None:
    first = compile_and_pin(pin_dir)
    assert first.reused == frozenset()
    assert sorted(p.name for p in pin_dir.iterdir()) == [
        "counters",
        "egress",
        "ingress",
        "listeners",
        "lookup",
        "pods",
        "reuse",
    ]
    before = pinned_programs(pin_dir)

    again = compile_and_pin(pin_dir)
    assert again.reused == {"ingress", "egress", "lookup"}
    assert again.tags == first.tags
    assert pinned_programs(pin_dir) == before  # the very same programs

    # Other code (here: a smaller extension header limit) is pinned in place of the old.
    changed = tmp_path / "bpf"
    shutil.copytree(packaged_sources(), changed)
    source = changed / "redirect.c"
    source.write_text(
        source.read_text().replace("#define ZT_MAX_EXT_HDRS 4", "#define ZT_MAX_EXT_HDRS 3")
    )
    replaced = compile_and_pin(pin_dir, changed)
    assert replaced.reused == {"lookup"}  # the only program that does not parse headers
    after = pinned_programs(pin_dir)
    for name in ("ingress", "egress"):
        tag, prog_id = after[name]
        assert tag == replaced.tags[name] != first.tags[name]
        assert prog_id != before[name][1]


def test_a_restarted_redirector_reuses_the_pins_and_keeps_the_maps(bpffs: Path) -> None:
    root = bpffs / "restart"
    first = Redirector(root)
    try:
        assert first.reused_pins == set()
        assert first.compiled and first.compile_seconds > 0
        # What a pod enrolled by this agent leaves in the maps (enrolling needs a netns).
        counters = CountersMap(first.pin_dir / "counters", ctypes.c_uint64, PodCountersStruct)
        with contextlib.closing(counters):
            counters.update(ctypes.c_uint64(77), PodCountersStruct(assigns=3))
        restarted = Redirector(root)
        try:
            assert restarted.reused_pins == {"ingress", "egress", "lookup"}
            assert not restarted.compiled  # the build stamp matched: nothing was compiled
            assert restarted.program_ids() == first.program_ids()
            assert restarted.enrolled_pods() == {77}
            assert restarted.all_counters() == {77: PodCounters(assigns=3)}
            restarted.forget(77)
            assert first.enrolled_pods() == set()
        finally:
            restarted.close()
    finally:
        first.close()
        first.remove_pins()
        root.rmdir()


def test_anything_but_the_same_build_compiles_again(
    bpffs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ztunnel_py.redirect")
    root = bpffs / "stamp"
    first = Redirector(root)
    pin_dir = first.pin_dir
    first.close()
    stamp = read_stamp(pin_dir)
    assert stamp is not None and set(stamp) == {"format", "source", "flags", "kernel", "bcc"}

    def restart(bpf_dir: Path | None = None) -> Redirector:
        caplog.clear()
        r = Redirector(root, bpf_dir=bpf_dir)
        r.close()
        return r

    try:
        # Another kernel (as the stamp of pins made under one would say).
        write_stamp(pin_dir, {**stamp, "kernel": "0" * 16})
        assert restart().compiled
        assert f"(kernel {'0' * 16} -> {stamp['kernel']}): compiling" in caplog.text
        assert read_stamp(pin_dir) == stamp
        assert not restart().compiled

        # Changed sources: compiled, and their stamp recorded.
        changed = tmp_path / "bpf"
        shutil.copytree(packaged_sources(), changed)
        source = changed / "redirect.c"
        source.write_text(source.read_text() + "\n/* changed */\n")
        assert restart(changed).compiled
        assert "(source " in caplog.text
        assert read_stamp(pin_dir) == {**stamp, "source": read_stamp(pin_dir)["source"]}
        assert read_stamp(pin_dir) != stamp
        assert not restart(changed).compiled
        assert restart().compiled  # back to the packaged sources

        # A missing program pin, a missing map pin, no stamp at all.
        (pin_dir / "egress").unlink()
        assert restart().compiled
        assert f"cannot open {pin_dir / 'egress'}" in caplog.text
        # A map made anew: the kept programs would use the old one, so they are replaced.
        (pin_dir / "reuse").unlink()
        assert restart().compiled
        assert f"cannot open {pin_dir / 'reuse'}" in caplog.text
        assert not restart().compiled
        (pin_dir / "build").unlink()
        assert restart().compiled
        assert "no build stamp" in caplog.text
        assert not restart().compiled
    finally:
        first.remove_pins()
        root.rmdir()


def test_the_map_wrapper_round_trips_on_a_pinned_map(
    compiled: tuple[Path, CompileReport],
) -> None:
    path, _ = compiled
    counters = CountersMap(path / "counters", ctypes.c_uint64, PodCountersStruct)
    pods = PodsMap(path / "pods", AddrKey, PodConfigStruct)
    try:
        assert counters.max_entries == 1024 and pods.max_entries == 2048
        assert counters.all_items() == [] and pods.all_keys() == []
        assert counters.lookup(ctypes.c_uint64(7)) is None
        assert counters.delete(ctypes.c_uint64(7)) is False

        for pod_id in range(1, 11):
            counters.update(ctypes.c_uint64(pod_id), PodCountersStruct(inbound=pod_id, drops=2))
        counters.update(ctypes.c_uint64(5), PodCountersStruct(inbound=50))  # replaces
        with pytest.raises(FileExistsError):
            counters.update(ctypes.c_uint64(5), PodCountersStruct(), flags=BPF_NOEXIST)
        found = counters.lookup(ctypes.c_uint64(5))
        assert found is not None and (found.inbound, found.drops) == (50, 0)
        assert sorted(k.value for k in counters.all_keys()) == list(range(1, 11))
        items = {k.value: (v.inbound, v.drops) for k, v in counters.all_items()}
        assert items == {i: (50, 0) if i == 5 else (i, 2) for i in range(1, 11)}
        assert counters.delete(ctypes.c_uint64(5)) is True
        assert counters.lookup(ctypes.c_uint64(5)) is None
        assert len(counters.all_keys()) == 9

        addrs = PodAddresses.parse(["10.1.2.3", "fd00::3"])
        cfg = encode_config(42, addrs, PodSettings(), saved_accept_local=1, ifindex=2)
        for ip in addrs.all:
            pods.update(addr_key(ip), cfg)
        stored = pods.lookup(addr_key(ipaddress.ip_address("fd00::3")))
        assert stored is not None and bytes(stored) == bytes(cfg)
        assert decode_addresses(stored) == addrs
        assert {bytes(k) for k in pods.all_keys()} == {bytes(addr_key(ip)) for ip in addrs.all}

        # A full map refuses a new key with the kernel's errno.
        for pod_id in range(1000, 1000 + counters.max_entries):
            try:
                counters.update(ctypes.c_uint64(pod_id), PodCountersStruct())
            except OSError as e:
                assert e.errno == errno.E2BIG
                assert e.filename == str(path / "counters")
                break
        else:
            pytest.fail("a full map accepted another key")
        assert len(counters.all_keys()) == counters.max_entries
    finally:
        for key in counters.all_keys():
            counters.delete(key)
        for addr in pods.all_keys():
            pods.delete(addr)
        counters.close()
        pods.close()


def test_pins_of_another_kind_or_layout_are_refused(compiled: tuple[Path, CompileReport]) -> None:
    path, _ = compiled
    fds = open_fds()
    with pytest.raises(RedirectError, match=r"another layout \(map_type 1, key_size 16, value_siz"):
        CountersMap(path / "pods", ctypes.c_uint64, PodCountersStruct)
    with pytest.raises(RedirectError, match="another layout"):
        CountersMap(path / "ingress", ctypes.c_uint64, PodCountersStruct)
    with pytest.raises(RedirectError, match="is not a BPF program"):
        bpfsys.open_program(path / "pods")
    with pytest.raises(FileNotFoundError):
        CountersMap(path / "missing", ctypes.c_uint64, PodCountersStruct)
    assert open_fds() == fds


def test_a_compile_failure_is_explained_and_leaves_nothing_behind(
    bpffs: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "bpf"
    broken.mkdir()
    shutil.copy(packaged_sources() / "redirect.c", broken)  # redirect.h is missing
    fds = open_fds()
    with pytest.raises(RedirectError) as failure:
        Redirector(bpffs / "broken", bpf_dir=broken)
    message = str(failure.value)
    assert message.startswith(f"cannot compile {broken / 'redirect.c'}: ")
    assert "'redirect.h' file not found" in message
    assert compile_children() == []
    assert open_fds() == fds
    assert list((bpffs / "broken" / f"v{LAYOUT_VERSION}").iterdir()) == []

    with pytest.raises(RedirectError, match="cannot read the BPF sources"):
        Redirector(bpffs / "broken", bpf_dir=tmp_path / "nowhere")
    with pytest.raises(RedirectError, match=r"took longer than 0\.01 s"):
        Redirector(bpffs / "broken", compile_timeout=0.01)
    assert compile_children() == []
    assert open_fds() == fds
    for d in (bpffs / "broken" / f"v{LAYOUT_VERSION}", bpffs / "broken"):
        d.rmdir()
