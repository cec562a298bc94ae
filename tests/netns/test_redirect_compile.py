"""The capture programs are compiled with bcc into a bytecode bundle in a child process, loaded
from the bundle with plain bpf(2), and used through bpf(2) (real kernel).

No network namespace is needed: everything is pinned on a bpffs mounted on a temporary directory for
this module and unmounted afterwards (the `bpffs` and `pin_dir` fixtures).
"""

from __future__ import annotations

import base64
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
from typing import Any

import pytest

from ztunnel_py.redirect import bpfsys
from ztunnel_py.redirect.bundle import decode, encode
from ztunnel_py.redirect.compile import (
    MODULE,
    PROGRAMS,
    build_key,
    compile_bundle,
    packaged_sources,
    read_bundle,
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
from ztunnel_py.redirect.programs import LoadReport, load_and_pin, read_stamp, write_stamp

pytestmark = pytest.mark.netns

BPF_NOEXIST = 1


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle of the packaged sources, compiled once for this module."""
    path = tmp_path_factory.mktemp("bundle") / "redirect.bundle.json"
    compile_bundle(path)
    return path


@pytest.fixture(scope="module")
def compiled(bpffs: Path, bundle_path: Path) -> Iterator[tuple[Path, LoadReport]]:
    """Programs and maps loaded and pinned once for the map tests."""
    path = bpffs / "shared"
    path.mkdir()
    try:
        yield path, load_and_pin(path, read_bundle(bundle_path))
    finally:
        for pin in path.iterdir():
            pin.unlink()
        path.rmdir()


def changed_sources(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the packaged sources with `old` replaced by `new` in redirect.c."""
    changed = tmp_path / "bpf"
    shutil.copytree(packaged_sources(), changed)
    source = changed / "redirect.c"
    assert old in source.read_text()
    source.write_text(source.read_text().replace(old, new))
    return changed


@contextlib.contextmanager
def redirector(root: Path, **options: Any) -> Iterator[Redirector]:
    """A Redirector on `root`; its pins, and `root`, are removed afterwards."""
    r = Redirector(root, **options)
    try:
        yield r
    finally:
        r.close()
        r.remove_pins()
        root.rmdir()


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


def test_the_agent_process_never_loads_bcc(bpffs: Path, bundle_path: Path) -> None:
    """What `ztunnel-py agent` does at start, in a fresh interpreter: no bcc, no LLVM."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from ztunnel_py.redirect.loader import Redirector\n"
        f"r = Redirector({str(bpffs / 'agent')!r}, bundle=Path({str(bundle_path)!r}))\n"
        "libs = sorted({line.split()[-1] for line in open('/proc/self/maps')\n"
        "               if 'LLVM' in line or 'clang' in line or 'libbcc' in line})\n"
        "print(json.dumps({'bcc': sorted(m for m in sys.modules if m.split('.')[0] == 'bcc'),\n"
        "                  'libs': libs, 'programs': sorted(r.programs),\n"
        "                  'loaded': r.loaded, 'compiled': r.compiled}))\n"
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
        "loaded": True,
        "compiled": False,
    }
    (bpffs / "agent").rmdir()


def test_a_bundle_holds_relocatable_programs_and_the_maps_attributes(bundle_path: Path) -> None:
    bundle = read_bundle(bundle_path)
    assert bundle.build_key == build_key(packaged_sources())
    assert set(bundle.programs) == set(PROGRAMS)
    assert {pin: m.name for pin, m in bundle.maps.items()} == {
        "pods": "zt_pods",
        "counters": "zt_counters",
        "listeners": "zt_listeners",
        "reuse": "zt_reuse",
    }
    assert bundle.maps["counters"].max_entries == 1024
    assert bundle.maps["listeners"].type == bpfsys.BPF_MAP_TYPE_SOCKHASH
    # Every program uses maps, and every map is used (by the tc programs or zt_lookup).
    used = {name for p in bundle.programs.values() for _, name in p.map_refs}
    assert used == set(bundle.maps)
    assert {name for _, name in bundle.programs["lookup"].map_refs} >= {"listeners", "reuse"}
    assert bundle.built_with["bcc"] and bundle.built_with["kernel"] == os.uname().release


def test_unchanged_programs_are_reused_and_changed_ones_replaced(
    pin_dir: Path, tmp_path: Path, bundle_path: Path
) -> None:
    bundle = read_bundle(bundle_path)
    first = load_and_pin(pin_dir, bundle)
    assert first.reused == frozenset() and first.loaded
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

    again = load_and_pin(pin_dir, bundle)
    assert again.reused == {"ingress", "egress", "lookup"}
    assert again.tags == first.tags
    assert pinned_programs(pin_dir) == before  # the very same programs

    # Other code (here: a smaller extension header limit) is pinned in place of the old.
    changed = changed_sources(tmp_path, "#define ZT_MAX_EXT_HDRS 4", "#define ZT_MAX_EXT_HDRS 3")
    compile_bundle(tmp_path / "changed.json", changed)
    replaced = load_and_pin(pin_dir, read_bundle(tmp_path / "changed.json"))
    assert replaced.reused == {"lookup"}  # the only program that does not parse headers
    after = pinned_programs(pin_dir)
    for name in ("ingress", "egress"):
        tag, prog_id = after[name]
        assert tag == replaced.tags[name] != first.tags[name]
        assert prog_id != before[name][1]


def test_a_restarted_redirector_reuses_the_pins_and_keeps_the_maps(
    bpffs: Path, bundle_path: Path
) -> None:
    root = bpffs / "restart"
    first = Redirector(root, bundle=bundle_path)
    try:
        assert first.reused_pins == set()
        assert first.loaded and not first.compiled and first.bundle_source == bundle_path
        # What a pod enrolled by this agent leaves in the maps (enrolling needs a netns).
        counters = CountersMap(first.pin_dir / "counters", ctypes.c_uint64, PodCountersStruct)
        with contextlib.closing(counters):
            counters.update(ctypes.c_uint64(77), PodCountersStruct(assigns=3))
        restarted = Redirector(root, bundle=bundle_path)
        try:
            assert restarted.reused_pins == {"ingress", "egress", "lookup"}
            assert not restarted.loaded  # the build stamp matched: nothing was loaded
            assert restarted.bundle_source is None
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


def test_anything_but_the_same_bundle_and_kernel_loads_again(
    bpffs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ztunnel_py.redirect")
    root = bpffs / "stamp"
    cache = tmp_path / "cache"
    first = Redirector(root, cache_dir=cache)
    pin_dir = first.pin_dir
    first.close()
    # Nothing matched in an empty cache (a checkout ships no bundle): compiled into the cache.
    key = build_key(packaged_sources())
    assert first.compiled and first.bundle_source == cache / f"{key}.json"
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.json"]  # no temporary left
    stamp = read_stamp(pin_dir)
    assert stamp is not None and set(stamp) == {"format", "bundle", "kernel"}
    assert stamp["bundle"] == key

    def restart(bpf_dir: Path | None = None) -> Redirector:
        caplog.clear()
        r = Redirector(root, bpf_dir=bpf_dir, cache_dir=cache)
        r.close()
        return r

    try:
        # Another kernel (as the stamp of pins made under one would say): loaded from the
        # cached bundle, not compiled; the maps are kept.
        write_stamp(pin_dir, {**stamp, "kernel": "0" * 16})
        again = restart()
        assert again.loaded and not again.compiled
        assert again.reused_pins == {"ingress", "egress", "lookup"}  # the same code
        assert f"(kernel {'0' * 16} -> {stamp['kernel']}): loading" in caplog.text
        assert read_stamp(pin_dir) == stamp
        assert not restart().loaded

        # Changed sources: a new bundle compiled into the cache, loaded, its stamp recorded.
        changed = changed_sources(
            tmp_path, "#define ZT_MAX_EXT_HDRS 4", "#define ZT_MAX_EXT_HDRS 3"
        )
        new = restart(changed)
        assert new.compiled and new.loaded
        new_key = build_key(changed)
        assert new.bundle_source == cache / f"{new_key}.json"
        assert f"(bundle {key} -> {new_key})" in caplog.text
        assert read_stamp(pin_dir) == {**stamp, "bundle": new_key}
        assert not restart(changed).loaded
        back = restart()  # back to the packaged sources: their bundle is still cached
        assert back.loaded and not back.compiled

        # A missing program pin, a missing map pin, no stamp at all.
        (pin_dir / "egress").unlink()
        assert restart().reused_pins == {"ingress", "lookup"}
        assert f"cannot open {pin_dir / 'egress'}" in caplog.text
        # A map made anew: the programs that use it (zt_ingress and zt_lookup) would keep the
        # old one, so they are replaced; zt_egress does not use it and is kept.
        ids = pinned_programs(pin_dir)
        (pin_dir / "reuse").unlink()
        remade = restart()
        assert remade.loaded and not remade.compiled and remade.reused_pins == {"egress"}
        assert f"cannot open {pin_dir / 'reuse'}" in caplog.text
        for name in ("ingress", "lookup"):
            assert pinned_programs(pin_dir)[name][1] != ids[name][1]
        assert not restart().loaded
        (pin_dir / "build").unlink()
        assert restart().loaded
        assert "no build stamp" in caplog.text
        assert not restart().loaded
    finally:
        first.remove_pins()
        root.rmdir()


def test_a_bundle_that_does_not_match_is_never_loaded(
    bpffs: Path, tmp_path: Path, bundle_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ztunnel_py.redirect")
    root = bpffs / "mismatch"
    changed = changed_sources(tmp_path, "#define ZT_MAX_EXT_HDRS 4", "#define ZT_MAX_EXT_HDRS 2")
    key, new_key = build_key(packaged_sources()), build_key(changed)
    # Given explicitly, a bundle of other sources is an error (the operator asked for it).
    with pytest.raises(RedirectError) as refused:
        Redirector(root, bpf_dir=changed, bundle=bundle_path, cache_dir=tmp_path / "cache")
    assert str(refused.value) == (
        f"the BPF bundle {bundle_path} cannot be loaded: it was built from other sources "
        f"(build key {key}, not {new_key})"
    )
    assert list((root / f"v{LAYOUT_VERSION}").iterdir()) == []
    # In the cache under the right name but with another key: passed over, compiled anew.
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(bundle_path, cache / f"{new_key}.json")
    with redirector(root, bpf_dir=changed, cache_dir=cache) as r:
        assert r.compiled and r.bundle_source == cache / f"{new_key}.json"
        assert f"not loading the BPF bundle {cache / f'{new_key}.json'}: it was built from " in (
            caplog.text
        )
        assert read_bundle(cache / f"{new_key}.json").build_key == new_key


def test_a_malformed_bundle_is_explained_or_compiled_anew(
    bpffs: Path, tmp_path: Path, bundle_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ztunnel_py.redirect")
    root = bpffs / "malformed"
    raw = bundle_path.read_bytes()
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RedirectError, match=f"the BPF bundle {truncated} is malformed: not a JSON"):
        Redirector(root, bundle=truncated, cache_dir=tmp_path / "cache")
    missing = tmp_path / "missing.json"
    with pytest.raises(RedirectError, match=f"cannot read the BPF bundle {missing}: No such file"):
        Redirector(root, bundle=missing, cache_dir=tmp_path / "cache")

    # A cached bundle cut short (a full disk, say): logged, compiled again, replaced.
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / f"{build_key(packaged_sources())}.json"
    cached.write_bytes(raw[:100])
    with redirector(root, cache_dir=cache) as r:
        assert r.compiled and r.loaded
        assert f"the BPF bundle {cached} is malformed: not a JSON document" in caplog.text
        assert cached.read_bytes() != raw[:100] and read_bundle(cached).programs


def test_a_program_the_verifier_refuses_fails_with_its_log(
    bpffs: Path, tmp_path: Path, bundle_path: Path
) -> None:
    """Well-formed but wrong bytecode (zt_lookup without its last instruction, the exit): the
    kernel's refusal comes with the tail of the verifier's log, and nothing is pinned."""
    value = json.loads(bundle_path.read_bytes())
    lookup = value["programs"]["lookup"]
    insns = base64.b64decode(lookup["insns"])
    lookup["insns"] = base64.b64encode(insns[:-8]).decode()
    broken = tmp_path / "broken.json"
    broken.write_bytes(encode(decode(json.dumps(value).encode())))
    root = bpffs / "refused"
    fds = open_fds()
    with pytest.raises(RedirectError) as refused:
        Redirector(root, bundle=broken, cache_dir=tmp_path / "cache")
    message = str(refused.value)
    assert message.startswith("the kernel refused zt_lookup (Invalid argument)\n  ")
    assert "last insn is not an exit or jmp" in message
    assert open_fds() == fds
    assert read_stamp(root / f"v{LAYOUT_VERSION}") is None
    for pin in (root / f"v{LAYOUT_VERSION}").iterdir():
        pin.unlink()
    (root / f"v{LAYOUT_VERSION}").rmdir()
    root.rmdir()


def test_the_map_wrapper_round_trips_on_a_pinned_map(
    compiled: tuple[Path, LoadReport],
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


def test_pins_of_another_kind_or_layout_are_refused(compiled: tuple[Path, LoadReport]) -> None:
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
    cache = tmp_path / "cache"
    fds = open_fds()
    with pytest.raises(RedirectError) as failure:
        Redirector(bpffs / "broken", bpf_dir=broken, cache_dir=cache)
    message = str(failure.value)
    assert message.startswith(f"cannot compile {broken / 'redirect.c'}: ")
    assert "'redirect.h' file not found" in message
    assert compile_children() == []
    assert open_fds() == fds
    assert list((bpffs / "broken" / f"v{LAYOUT_VERSION}").iterdir()) == []
    assert not cache.exists() or list(cache.iterdir()) == []

    with pytest.raises(RedirectError, match="cannot read the BPF sources"):
        Redirector(bpffs / "broken", bpf_dir=tmp_path / "nowhere", cache_dir=cache)
    with pytest.raises(RedirectError, match=r"took longer than 0\.01 s"):
        Redirector(bpffs / "broken", cache_dir=cache, compile_timeout=0.01)
    assert compile_children() == []
    assert open_fds() == fds
    for d in (bpffs / "broken" / f"v{LAYOUT_VERSION}", bpffs / "broken"):
        d.rmdir()
