"""Socket addresses: what `SocketAddr.parse` accepts and refuses, how addresses are written
(bracketed IPv6, gRPC targets), and the round trip for every IPv4 and IPv6 address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztunnel_py.model.address import SocketAddr, canonical_ip, is_hostname

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:80", SocketAddr(ip("10.0.0.1"), 80)),
        ("[fd00::2]:15012", SocketAddr(ip("fd00::2"), 15012)),
        ("[::]:15012", SocketAddr(ip("::"), 15012)),
        ("[::ffff:10.0.0.1]:8080", SocketAddr(ip("::ffff:10.0.0.1"), 8080)),
        ("0.0.0.0:65535", SocketAddr(ip("0.0.0.0"), 65535)),
        ("[FD00::A]:1", SocketAddr(ip("fd00::a"), 1)),
    ],
)
def test_ip_addresses_parse(text: str, expected: SocketAddr) -> None:
    assert SocketAddr.parse(text) == expected
    assert SocketAddr.parse(text, hostname=True) == expected


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("localhost:15012", "localhost"),
        ("istiod.istio-system.svc:15012", "istiod.istio-system.svc"),
        ("reviews.default.svc.cluster.local.:9080", "reviews.default.svc.cluster.local."),
        ("a:1", "a"),
    ],
)
def test_names_parse_only_where_the_caller_allows_them(text: str, host: str) -> None:
    assert SocketAddr.parse(text, hostname=True) == SocketAddr(host, int(text.rpartition(":")[2]))
    with pytest.raises(ValueError, match=r"is not IP:PORT or \[IPv6\]:PORT \(an IP address"):
        SocketAddr.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fd00::2:15012", r"an IPv6 address goes in brackets, as \[fd00::2\]:15012"),
        ("10.0.0.1", "is not IP:PORT"),
        ("10.0.0.1:", "the port must be a number from 1 to 65535"),
        ("10.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("10.0.0.1:65536", "the port must be a number from 1 to 65535"),
        ("10.0.0.1:+80", "the port must be a number"),
        ("10.0.0.1: 80", "the port must be a number"),
        ("10.0.0.1:٨٠", "the port must be a number"),
        (":80", "is not IP:PORT"),
        ("", "is not IP:PORT"),
        ("[fd00::2]", "is not IP:PORT"),
        ("[fd00::2]15012", "is not IP:PORT"),
        ("[fd00::2:15012", "is not IP:PORT"),
        ("[10.0.0.1]:80", "brackets hold an IPv6 address, not '10.0.0.1'"),
        ("[localhost]:80", "brackets hold an IPv6 address"),
        ("10.0.0.256:80", r"\(an IP address, not a name\)"),
    ],
)
def test_malformed_addresses_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        SocketAddr.parse(text, what="--xds-address")
    assert str(refused.value).startswith(f"--xds-address: {text!r}")


@pytest.mark.parametrize(
    "text", ["10.0.0.256:80", "10.0.0:80", "-lead.example:80", "a..b:80", "x" * 254 + ":80"]
)
def test_what_is_neither_an_ip_nor_a_name_is_refused_with_names_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="is not a host name"):
        SocketAddr.parse(text, hostname=True)


def test_ipv6_is_written_in_brackets_and_ipv4_and_names_plainly() -> None:
    assert str(SocketAddr(ip("fd00::2"), 15012)) == "[fd00::2]:15012"
    assert str(SocketAddr(ip("10.0.0.1"), 80)) == "10.0.0.1:80"
    assert str(SocketAddr("istiod.istio-system.svc", 15012)) == "istiod.istio-system.svc:15012"


def test_grpc_targets_name_their_resolver() -> None:
    assert SocketAddr(ip("10.250.0.2"), 15012).grpc_target == "ipv4:10.250.0.2:15012"
    assert SocketAddr(ip("fd00::2"), 15012).grpc_target == "ipv6:[fd00::2]:15012"
    # Without dns:///, grpc would read `unix:15012` as a Unix socket path.
    assert SocketAddr("unix", 15012).grpc_target == "dns:///unix:15012"


def test_a_textual_ip_host_is_stored_as_an_ip() -> None:
    assert SocketAddr("10.0.0.1", 80) == SocketAddr(ip("10.0.0.1"), 80)
    assert SocketAddr("fd00::1", 80).host == ip("fd00::1")
    assert SocketAddr("fd00::1", 80).ip == ip("fd00::1")
    with pytest.raises(ValueError, match="names a host, not an IP address"):
        _ = SocketAddr("localhost", 80).ip


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("10.0.0.1", -1, "port -1 is not from 0 to 65535"),
        ("10.0.0.1", 65536, "port 65536 is not from 0 to 65535"),
        ("10.0.0.1", True, "port True is not from 0 to 65535"),
        ("not a name", 80, "'not a name' is neither an IP address nor a DNS name"),
        ("[fd00::1]", 80, "is neither an IP address nor a DNS name"),
    ],
)
def test_impossible_addresses_cannot_be_built(host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SocketAddr(host, port)


def test_port_zero_can_be_built_for_a_listener() -> None:
    assert str(SocketAddr("127.0.0.1", 0)) == "127.0.0.1:0"


def test_hostnames() -> None:
    assert is_hostname("echo.apps.svc.cluster.local")
    assert is_hostname("under_score.example")
    assert not is_hostname("")
    assert not is_hostname("1.2.3")  # a numeric last label is an (invalid) IPv4 address
    assert not is_hostname("a." + "b" * 64)


def test_ipv4_mapped_addresses_are_canonical_ipv4() -> None:
    assert canonical_ip(ip("::ffff:10.0.0.1")) == ip("10.0.0.1")
    assert canonical_ip(ip("fd00::1")) == ip("fd00::1")


ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join).filter(is_hostname)


@given(ipv4 | ipv6, ports)
def test_every_ip_address_round_trips(host: ipaddress.IPv4Address, port: int) -> None:
    address = SocketAddr(host, port)
    assert SocketAddr.parse(str(address)) == address
    assert SocketAddr.parse(str(address), hostname=True) == address


@given(names, ports)
def test_every_name_round_trips(host: str, port: int) -> None:
    address = SocketAddr(host, port)
    assert SocketAddr.parse(str(address), hostname=True) == address


@given(ipv6, ports)
def test_an_ipv6_address_never_reads_as_another(host: ipaddress.IPv6Address, port: int) -> None:
    # The bug this type exists for: unbracketed, `fd00::2:15012` is a different address.
    text = f"{host}:{port}"
    with pytest.raises(ValueError, match="goes in brackets"):
        SocketAddr.parse(text)
