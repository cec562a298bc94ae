"""Capture settings: validation, and the exact bytes the BPF programs read."""

from __future__ import annotations

import ctypes
import ipaddress
from pathlib import Path

import pytest

from ztunnel_py.redirect.bpffs import is_bpffs
from ztunnel_py.redirect.maps import (
    AddrKey,
    ListenerKey,
    PodAddresses,
    PodConfigStruct,
    PodCounters,
    PodCountersStruct,
    PodSettings,
    RedirectError,
    addr_key,
    decode_addresses,
    decode_settings,
    encode_config,
    port_ranges,
)


def test_ports_are_stored_as_contiguous_ranges() -> None:
    assert port_ranges([]) == []
    assert port_ranges([7, 1, 3, 2, 2]) == [(1, 3), (7, 7)]
    assert port_ranges(range(1000, 2001)) == [(1000, 2000)]


def test_defaults_exempt_istio_probe_sources() -> None:
    s = PodSettings()
    assert s.probe_source_v4 == "169.254.7.127"
    assert s.probe_source_v6 == "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
    assert s.excluded_inbound_ports == frozenset()


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80", 80.0])
def test_bad_ports_are_refused(port: object) -> None:
    with pytest.raises(RedirectError, match="not a TCP port"):
        PodSettings(excluded_outbound_ports=frozenset({port}))  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [15001, 15006, 15008])
def test_the_agents_ports_cannot_be_excluded_inbound(port: int) -> None:
    with pytest.raises(RedirectError, match="agent's ports"):
        PodSettings(excluded_inbound_ports=frozenset({port, 80}))


def test_probe_sources_must_match_their_family() -> None:
    with pytest.raises(RedirectError, match="not an IPv4"):
        PodSettings(probe_source_v4="fd00::1")
    with pytest.raises(RedirectError, match="not an IPv6"):
        PodSettings(probe_source_v6="10.0.0.1")
    with pytest.raises(RedirectError, match="not an IP address"):
        PodSettings(probe_source_v4="kubelet")
    off = PodSettings(probe_source_v4=None, probe_source_v6=None)
    assert (off.probe_source_v4, off.probe_source_v6) == (None, None)


def test_pod_ips_are_validated_and_split_by_family() -> None:
    addrs = PodAddresses.parse(["10.1.0.5", "fd00::5", "10.1.0.5", "FD00::5"])
    assert addrs.as_strings() == ["10.1.0.5", "fd00::5"]
    assert addrs.families == frozenset({4, 6})
    assert PodAddresses.parse(["fd00::5"]).families == frozenset({6})


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        ([], "at least one IP"),
        ("10.1.0.5", "not a string"),
        (["10.1.0.300"], "not an IP address"),
        (["0.0.0.0"], "cannot be a pod's address"),
        (["127.0.0.1"], "cannot be a pod's address"),
        (["ff02::1"], "cannot be a pod's address"),
        ([f"10.1.0.{i}" for i in range(1, 6)], "at most 4"),
    ],
)
def test_bad_pod_ips_are_refused(ips: list[str], message: str) -> None:
    with pytest.raises(RedirectError, match=message):
        PodAddresses.parse(ips)


def test_struct_layout_matches_bpf_redirect_h() -> None:
    assert ctypes.sizeof(AddrKey) == 16
    assert ctypes.sizeof(PodConfigStruct) == 264
    assert PodConfigStruct.pod_id.offset == 0
    assert PodConfigStruct.in_excluded.offset == 124
    assert ctypes.sizeof(PodCountersStruct) == 6 * 8
    # bcc cannot describe a sockhash's key, so the compile-time check does not cover this one
    assert ctypes.sizeof(ListenerKey) == 16
    assert (ListenerKey.port.offset, ListenerKey.family.offset) == (8, 12)


def test_addresses_are_stored_in_network_byte_order() -> None:
    v4 = addr_key(ipaddress.IPv4Address("10.1.0.5"))
    assert bytes(v4) == b"\0" * 10 + b"\xff\xff" + bytes([10, 1, 0, 5])
    v6 = ipaddress.IPv6Address("fd00::1:2")
    assert bytes(addr_key(v6)) == v6.packed
    cfg = encode_config(
        7, PodAddresses.parse(["10.1.0.5"]), PodSettings(), saved_accept_local=1, ifindex=2
    )
    assert bytes(cfg)[PodConfigStruct.ip4.offset : PodConfigStruct.ip4.offset + 4] == bytes(
        [10, 1, 0, 5]
    )
    probe = PodConfigStruct.probe_ip4.offset
    assert bytes(cfg)[probe : probe + 4] == bytes([169, 254, 7, 127])


def test_config_round_trips() -> None:
    addrs = PodAddresses.parse(["10.1.0.5", "10.1.0.6", "fd00::5"])
    settings = PodSettings(
        excluded_inbound_ports=frozenset({22, 8000, 8001, 8002}),
        excluded_outbound_ports=frozenset({3306}),
        probe_source_v6=None,
    )
    cfg = encode_config(42, addrs, settings, saved_accept_local=1, ifindex=3)
    assert (cfg.pod_id, cfg.saved_accept_local, cfg.ifindex) == (42, 1, 3)
    assert (cfg.n_in_excluded, cfg.n_out_excluded) == (2, 1)
    assert (cfg.in_excluded[1].lo, cfg.in_excluded[1].hi) == (8000, 8002)
    copy = PodConfigStruct.from_buffer_copy(bytes(cfg))
    assert decode_addresses(copy) == addrs
    assert decode_settings(copy) == settings


def test_too_many_port_ranges_are_refused() -> None:
    scattered = frozenset(range(1000, 1034, 2))  # 17 separate ports
    with pytest.raises(RedirectError, match="17 ranges; at most 16"):
        encode_config(
            1,
            PodAddresses.parse(["10.1.0.5"]),
            PodSettings(excluded_outbound_ports=scattered),
            saved_accept_local=1,
            ifindex=2,
        )


def test_counters_come_from_the_map_value() -> None:
    raw = PodCountersStruct(1, 2, 3, 4, 5, 6)
    assert PodCounters.from_struct(raw) == PodCounters(1, 2, 3, 4, 5, 6)


def test_a_plain_directory_is_not_a_bpffs(tmp_path: Path) -> None:
    assert not is_bpffs(tmp_path)
