"""Packet captures on the testbed fabric, and what they show about the traffic on the wire.

`tcpdump` records the fabric bridge (inside the fabric namespace) to a pcap file; `analyze`
reassembles each TCP direction and reports, per port, the TLS record types and versions seen
(the ServerHello's supported_versions says whether TLS 1.3 was negotiated) and whether any of
a list of markers appears in clear anywhere in the capture.
"""

from __future__ import annotations

import struct
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


@dataclass
class FlowStats:
    """The payload segments of one TCP direction, by sequence number."""

    first_seq: int | None = None
    segments: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, data: bytes) -> None:
        if self.first_seq is None:
            self.first_seq = seq
        self.segments.setdefault(seq, data)

    def stream(self) -> bytes:
        """The contiguous byte stream from the first segment seen (stops at a capture gap)."""
        first = self.first_seq
        if first is None:
            return b""

        def rel(seq: int) -> int:
            return (seq - first) % (1 << 32)

        out = bytearray()
        for seq in sorted(self.segments, key=rel):
            start = rel(seq)
            if start > len(out):
                break
            out += self.segments[seq][len(out) - start :]
        return bytes(out)


@dataclass
class CaptureReport:
    packets: int = 0
    tcp_payload_bytes: dict[int, int] = field(default_factory=dict)
    tls_records: dict[int, dict[str, int]] = field(default_factory=dict)
    tls13_negotiated: dict[int, bool] = field(default_factory=dict)
    markers_in_clear: list[str] = field(default_factory=list)


def _packets(pcap: bytes) -> list[bytes]:
    if len(pcap) < 24:
        return []
    (magic,) = struct.unpack_from("<I", pcap, 0)
    endian = "<"
    if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
        endian = ">"
        (magic,) = struct.unpack_from(">I", pcap, 0)
        if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            raise ValueError("not a pcap file")
    linktype = struct.unpack_from(endian + "I", pcap, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"unsupported pcap link type {linktype}")
    out, pos = [], 24
    while pos + 16 <= len(pcap):
        incl = struct.unpack_from(endian + "I", pcap, pos + 8)[0]
        out.append(pcap[pos + 16 : pos + 16 + incl])
        pos += 16 + incl
    return out


def _tcp(frame: bytes) -> tuple[tuple[str, int, str, int], int, bytes] | None:
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != 6:
            return None
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
    elif ethertype == 0x86DD:
        ip = frame[14:]
        if len(ip) < 40 or ip[6] != 6:
            return None
        plen = struct.unpack_from("!H", ip, 4)[0]
        src, dst = ip[8:24].hex(), ip[24:40].hex()
        tcp = ip[40 : 40 + plen]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
    doff = (tcp[12] >> 4) * 4
    return (src, sport, dst, dport), seq, bytes(tcp[doff:])


def _tls_records(stream: bytes) -> tuple[dict[str, int], bool]:
    """Count TLS records by type; True if a ServerHello selected TLS 1.3."""
    counts: dict[str, int] = defaultdict(int)
    tls13 = False
    pos = 0
    while pos + 5 <= len(stream):
        ctype, version, length = struct.unpack_from("!BHH", stream, pos)
        if ctype not in TLS_CONTENT_TYPES or version not in (0x0301, 0x0303):
            counts["not_tls"] += 1
            break
        body = stream[pos + 5 : pos + 5 + length]
        counts[TLS_CONTENT_TYPES[ctype]] += 1
        if ctype == 22 and body[:1] == b"\x02":
            tls13 = tls13 or _server_hello_is_tls13(body)
        pos += 5 + length
    return dict(counts), tls13


def _server_hello_is_tls13(hs: bytes) -> bool:
    # ServerHello: type(1) len(3) version(2) random(32) sid_len(1) sid cipher(2) comp(1) ext...
    try:
        pos = 4 + 2 + 32
        pos += 1 + hs[pos]
        pos += 3
        ext_len = struct.unpack_from("!H", hs, pos)[0]
        pos += 2
        end = pos + ext_len
        while pos + 4 <= end:
            etype, elen = struct.unpack_from("!HH", hs, pos)
            if etype == 0x002B and elen == 2:
                return bool(struct.unpack_from("!H", hs, pos + 4)[0] == 0x0304)
            pos += 4 + elen
    except (IndexError, struct.error):
        return False
    return False


def analyze(pcap_path: Path, tls_ports: set[int], markers: list[bytes]) -> CaptureReport:
    report = CaptureReport()
    flows: dict[tuple[str, int, str, int], FlowStats] = defaultdict(FlowStats)
    raw = pcap_path.read_bytes()
    for frame in _packets(raw):
        report.packets += 1
        parsed = _tcp(frame)
        if parsed is None:
            continue
        key, seq, payload = parsed
        if payload:
            flows[key].add(seq, payload)
            for port in (key[1], key[3]):
                report.tcp_payload_bytes[port] = report.tcp_payload_bytes.get(port, 0) + len(
                    payload
                )
    for key, flow in flows.items():
        tls_port = key[3] if key[3] in tls_ports else key[1] if key[1] in tls_ports else None
        if tls_port is None:
            continue
        port = tls_port
        counts, tls13 = _tls_records(flow.stream())
        agg = report.tls_records.setdefault(port, {})
        for name, n in counts.items():
            agg[name] = agg.get(name, 0) + n
        report.tls13_negotiated[port] = report.tls13_negotiated.get(port, False) or tls13
    report.markers_in_clear = [m.decode(errors="replace") for m in markers if m in raw]
    return report


class FabricCapture:
    """`tcpdump` on the fabric bridge, inside the fabric namespace, into a pcap file."""

    def __init__(
        self,
        fabric_netns: str,
        interface: str,
        pcap: Path,
        bpf_filter: str,
        max_packets: int = 4000,
    ) -> None:
        # Full packets are kept (the payload is what we inspect), so the count is bounded:
        # a multi-Gbit/s transfer would otherwise write gigabytes.
        self.pcap = pcap
        self._argv = [
            "ip",
            "netns",
            "exec",
            fabric_netns,
            "tcpdump",
            "-i",
            interface,
            "-U",
            # Each packet is handed over at once: buffered ones would be lost when the capture
            # is stopped right after short traffic.
            "--immediate-mode",
            "-s",
            "0",
            "-c",
            str(max_packets),
            "-w",
            str(pcap),
            bpf_filter,
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FabricCapture:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump prints "listening on ..." once the capture is armed (or an error and exits).
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline()
        if b"listening" not in line:
            self.__exit__(None, None, None)
            raise RuntimeError(f"tcpdump did not start: {line.decode(errors='replace').strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
