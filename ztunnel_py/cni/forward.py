"""The wire format between the host shim (`shim/ztunnel-py-cni.c`) and the CNI node pod,
without I/O. All integers are 32-bit big-endian:

- request: `ZPC1`, a count N, N fields `KEY=VALUE` (the shim's CNI_* environment), one field
  with the network configuration from the runtime's stdin; a field is a length and its bytes.
  An open descriptor of the pod's network namespace may ride along as SCM_RIGHTS;
- response: the exit status, a field for stdout, a field for stderr.

The shim shuts its side down after the request, so a request is complete exactly when the
connection's bytes end; `decode_request` refuses anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from ztunnel_py.cni.spec import MAX_STDIN

MAGIC = b"ZPC1"
MAX_ENV_ENTRIES = 256
MAX_ENV_ENTRY = 64 * 1024
# The largest request the server reads: the stdin limit plus a full environment.
MAX_REQUEST = MAX_STDIN + 1 + 4 + 4 + MAX_ENV_ENTRIES * (4 + MAX_ENV_ENTRY) + 4
_U32 = struct.Struct(">I")


class ForwardError(Exception):
    """A request that is not in the shim's format."""


@dataclass(frozen=True, slots=True)
class Request:
    env: Mapping[str, str]
    stdin: bytes


def _u32(data: bytes, offset: int, what: str) -> tuple[int, int]:
    if offset + 4 > len(data):
        raise ForwardError(f"request cut short in {what}")
    return _U32.unpack_from(data, offset)[0], offset + 4


def _field(data: bytes, offset: int, limit: int, what: str) -> tuple[bytes, int]:
    length, offset = _u32(data, offset, what)
    if length > limit:
        raise ForwardError(f"{what} of {length} bytes is over the limit of {limit}")
    if offset + length > len(data):
        raise ForwardError(f"request cut short in {what}")
    return data[offset : offset + length], offset + length


def decode_request(data: bytes) -> Request:
    if not data.startswith(MAGIC):
        raise ForwardError("not a ztunnel-py-cni request (bad magic)")
    count, offset = _u32(data, len(MAGIC), "the environment count")
    if count > MAX_ENV_ENTRIES:
        raise ForwardError(f"{count} environment entries is over the limit of {MAX_ENV_ENTRIES}")
    env: dict[str, str] = {}
    for _ in range(count):
        raw, offset = _field(data, offset, MAX_ENV_ENTRY, "an environment entry")
        key, sep, value = raw.decode(errors="replace").partition("=")
        if not sep or not key.startswith("CNI_"):
            raise ForwardError(f"environment entry {key!r} is not CNI_KEY=VALUE")
        env[key] = value
    stdin, offset = _field(data, offset, MAX_STDIN + 1, "the network configuration")
    if offset != len(data):
        raise ForwardError(f"{len(data) - offset} bytes after the request")
    return Request(env, stdin)


def encode_response(status: int, stdout: bytes, stderr: bytes) -> bytes:
    status_word = _U32.pack(status & 0xFFFFFFFF)
    return b"".join((status_word, _U32.pack(len(stdout)), stdout, _U32.pack(len(stderr)), stderr))
