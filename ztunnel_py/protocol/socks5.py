"""Sans-IO SOCKS5 server side (RFC 1928), as ztunnel's 15080 listener speaks it.

Minimal on purpose, like ztunnel: the "no authentication" method only, the CONNECT command only,
IPv4, IPv6 and domain-name targets. Feed received bytes to `Socks5Server.receive_data` until it
returns the requested target, connect, then answer with `reply_success` or `reply_failure` and
write `data_to_send()`. Bytes the client pipelined after its request are in `remaining`.

A request that cannot be served raises `Socks5Error`; the reply that tells the client why (when
the protocol has one) is already queued in `data_to_send()`: write it, then close.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from ztunnel_py.model.address import IPAddress

__all__ = ["ReplyCode", "Socks5Error", "Socks5Request", "Socks5Server"]

VERSION = 5
_NO_AUTH = 0x00
_NO_ACCEPTABLE_METHOD = 0xFF
_CMD_CONNECT = 0x01
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04
_PORT = struct.Struct(">H")


class ReplyCode(enum.IntEnum):
    """The REP field of a SOCKS5 reply."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Socks5Error(Exception):
    """The client's greeting or request cannot be served; `reply` says what it was told
    (None when the bytes were not SOCKS5 at all and nothing was sent)."""

    def __init__(self, reason: str, reply: ReplyCode | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Socks5Request:
    """A CONNECT request: an IP address, or a domain name left for the caller to resolve."""

    host: IPAddress | str
    port: int


class _State(enum.Enum):
    GREETING = enum.auto()
    REQUEST = enum.auto()
    AWAITING_REPLY = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class Socks5Server:
    """One SOCKS5 client connection, server side."""

    def __init__(self) -> None:
        self._state = _State.GREETING
        self._buffer = bytearray()
        self._out = bytearray()
        self._remaining = b""

    @property
    def remaining(self) -> bytes:
        """Bytes received after the request (the client's first payload); relay them on."""
        return self._remaining

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> Socks5Request | None:
        """Feed received bytes; returns the request once complete, None while more is needed.

        Raises `Socks5Error` for anything that cannot be served (the failure reply, if any, is
        queued), and `RuntimeError` if called after the request was parsed or after an error.
        """
        if self._state in (_State.AWAITING_REPLY, _State.DONE, _State.FAILED):
            raise RuntimeError(f"SOCKS5 negotiation is over (state {self._state.name})")
        self._buffer += data
        try:
            if self._state is _State.GREETING and not self._parse_greeting():
                return None
            return self._parse_request()
        except Socks5Error:
            self._state = _State.FAILED
            raise

    def reply_success(self, bound_address: IPAddress, bound_port: int) -> None:
        """Tell the client its connection is up, from `bound_address:bound_port`."""
        self._reply(ReplyCode.SUCCEEDED, bound_address, bound_port)
        self._state = _State.DONE

    def reply_failure(self, code: ReplyCode) -> None:
        """Tell the client its connection failed (then close)."""
        if code is ReplyCode.SUCCEEDED:
            raise ValueError("reply_failure needs a failure code")
        self._reply(code, ipaddress.IPv4Address(0), 0)
        self._state = _State.FAILED

    def _reply(self, code: ReplyCode, address: IPAddress, port: int) -> None:
        if self._state is not _State.AWAITING_REPLY:
            raise RuntimeError(f"no SOCKS5 request is waiting for a reply ({self._state.name})")
        atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
        self._out += bytes([VERSION, code, 0x00, atyp]) + address.packed + _PORT.pack(port)

    def _fail(self, reason: str, code: ReplyCode) -> Socks5Error:
        self._out += bytes([VERSION, code, 0x00, _ATYP_IPV4]) + bytes(6)
        return Socks5Error(reason, code)

    def _parse_greeting(self) -> bool:
        buf = self._buffer
        if buf and buf[0] != VERSION:
            raise Socks5Error(
                f"not a SOCKS5 client (version byte {buf[0]:#04x}); only SOCKS5 is supported",
                None,
            )
        if len(buf) < 2:
            return False
        count = buf[1]
        if len(buf) < 2 + count:
            return False
        methods = bytes(buf[2 : 2 + count])
        del buf[: 2 + count]
        if _NO_AUTH not in methods:
            self._out += bytes([VERSION, _NO_ACCEPTABLE_METHOD])
            raise Socks5Error(
                f"client offers auth methods {list(methods)}; only 0 (no authentication) is "
                "supported",
                None,
            )
        self._out += bytes([VERSION, _NO_AUTH])
        self._state = _State.REQUEST
        return True

    def _parse_request(self) -> Socks5Request | None:
        buf = self._buffer
        if len(buf) < 5:
            if buf and buf[0] != VERSION:
                raise self._fail(f"request has version {buf[0]:#04x}", ReplyCode.GENERAL_FAILURE)
            return None
        version, command, _reserved, atyp = buf[0], buf[1], buf[2], buf[3]
        if version != VERSION:
            raise self._fail(f"request has version {version:#04x}", ReplyCode.GENERAL_FAILURE)
        if command != _CMD_CONNECT:
            raise self._fail(
                f"command {command:#04x} is not supported (only CONNECT)",
                ReplyCode.COMMAND_NOT_SUPPORTED,
            )
        if atyp == _ATYP_IPV4:
            end = 4 + 4
        elif atyp == _ATYP_IPV6:
            end = 4 + 16
        elif atyp == _ATYP_DOMAIN:
            end = 5 + buf[4]
        else:
            raise self._fail(
                f"address type {atyp:#04x} is not supported",
                ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
            )
        if len(buf) < end + 2:
            return None
        host: IPAddress | str
        if atyp == _ATYP_IPV4:
            host = ipaddress.IPv4Address(bytes(buf[4:end]))
        elif atyp == _ATYP_IPV6:
            host = ipaddress.IPv6Address(bytes(buf[4:end]))
        else:
            host = self._domain(bytes(buf[5:end]))
        (port,) = _PORT.unpack_from(buf, end)
        if port == 0:
            raise self._fail("destination port 0 is not valid", ReplyCode.GENERAL_FAILURE)
        self._remaining = bytes(buf[end + 2 :])
        buf.clear()
        self._state = _State.AWAITING_REPLY
        return Socks5Request(host, port)

    def _domain(self, raw: bytes) -> IPAddress | str:
        if not raw:
            raise self._fail("empty domain name", ReplyCode.GENERAL_FAILURE)
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail(
                "domain name is not ASCII (send IDNA/punycode)", ReplyCode.GENERAL_FAILURE
            ) from None
        if not name.isprintable() or " " in name:
            raise self._fail(f"invalid domain name {name!r}", ReplyCode.GENERAL_FAILURE)
        # Clients such as curl --socks5-hostname send literal IPs as names too.
        try:
            return ipaddress.ip_address(name)
        except ValueError:
            return name
