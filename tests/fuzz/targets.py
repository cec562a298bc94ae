"""Fuzz targets: each takes arbitrary bytes and feeds them to one parser of untrusted input.

A target returns normally for any input the parser handles as designed: a result, or the
parser's own clear error (its documented exception type). Anything else (another exception, a
hang, a crash) is a bug. The targets use no fuzzing library, so the corpus files double as
regression inputs (`test_corpus.py`); `run.py` drives them with atheris (coverage-guided).

Targets: `hbone_server` (the HBONE server core), `socks5`, `zds` (enrollment messages),
`xds` (Delta xDS responses with the workload and L7 types, and requests),
`cni` (network configuration and CNI_ARGS), `localconfig` (ztunnel's local-config file),
`yaml_validator` (the control plane's YAML sources through validation and translation),
`http_h1` and `http_h2` (the HTTP engine's server codecs).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from ztunnel_py.cni.spec import (
    CniError,
    Command,
    declared_version,
    parse_cni_args,
    parse_config,
    parse_invocation,
    version_answer,
)
from ztunnel_py.controlplane.sources.yamldocs import parse_documents
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.http.h1 import H1Server
from ztunnel_py.http.h2 import H2Server
from ztunnel_py.protocol.hbone import DataReceived, HboneServer
from ztunnel_py.protocol.socks5 import Socks5Error, Socks5Server
from ztunnel_py.protocol.zds import AddPod, ZdsError, decode_request
from ztunnel_py.xds.convert import WORKLOAD_DECODERS, XdsDecodeError, decode_response
from ztunnel_py.xds.convert import decode_request as decode_xds_request
from ztunnel_py.xds.l7convert import L7_DECODERS
from ztunnel_py.xds.localconfig import ConfigError, parse_local_config

Target = Callable[[bytes], None]


def chunks(data: bytes) -> Iterator[bytes]:
    """Split input the way a network delivers it: the first byte sets the chunk size, so one
    input also exercises parsers resuming in the middle of a message."""
    if not data:
        return
    size = data[0] % 64 + 1 if data[0] < 192 else len(data)
    rest = data[1:]
    for start in range(0, len(rest), size):
        yield rest[start : start + size]


def hbone_server(data: bytes) -> None:
    server = HboneServer()
    for chunk in chunks(data):
        for event in server.receive_data(chunk):
            if isinstance(event, DataReceived):
                server.acknowledge_received_data(event.stream_id, len(event.data))
        server.data_to_send()


def socks5(data: bytes) -> None:
    server = Socks5Server()
    try:
        for chunk in chunks(data):
            if server.receive_data(chunk) is not None:
                return
    except Socks5Error:
        pass


def zds(data: bytes) -> None:
    # An odd first byte sends one descriptor along, as an AddWorkload must.
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)] if data[:1] and data[0] & 1 else []
    try:
        request = decode_request(data[1:], fds)
    except ZdsError:
        return  # it closed the descriptors
    if isinstance(request, AddPod):
        os.close(request.netns_fd)
    else:
        assert not fds, "a request without a descriptor kept one"


_XDS_DECODERS = {**WORKLOAD_DECODERS, **L7_DECODERS}


def xds(data: bytes) -> None:
    try:
        if data[:1] == b"\x00":
            decode_xds_request(data[1:])
        else:
            decode_response(data[1:], _XDS_DECODERS)
    except XdsDecodeError:
        pass


def cni(data: bytes) -> None:
    # The first line is CNI_ARGS, the rest the network configuration on stdin.
    args, _, stdin = data.partition(b"\n")
    declared_version(stdin)
    try:
        version_answer(stdin)
        parse_config(stdin)
        parse_cni_args(args.decode("utf-8", "replace"))
        env = {
            "CNI_CONTAINERID": "0123abcd",
            "CNI_NETNS": "/run/netns/p",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": args.decode("utf-8", "replace"),
        }
        for command in (Command.ADD, Command.DEL, Command.CHECK):
            parse_invocation(command, env, stdin)
    except CniError:
        pass


def localconfig(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_local_config(data, "fuzz.yaml")


_store = ConfigStore(report=False)


def yaml_validator(data: bytes) -> None:
    # The store validates and translates; bad input becomes diagnostics, never an exception.
    _store.apply({"fuzz.yaml": parse_documents(data, "fuzz.yaml")})


def http_h1(data: bytes) -> None:
    server = H1Server()
    for chunk in chunks(data):
        server.receive_data(chunk)
    server.receive_data(b"")


def http_h2(data: bytes) -> None:
    server = H2Server()
    for chunk in chunks(data):
        server.receive_data(chunk)
        server.data_to_send()


TARGETS: dict[str, Target] = {
    "hbone_server": hbone_server,
    "socks5": socks5,
    "zds": zds,
    "xds": xds,
    "cni": cni,
    "localconfig": localconfig,
    "yaml_validator": yaml_validator,
    "http_h1": http_h1,
    "http_h2": http_h2,
}
