"""Chaining the plugin into a node's CNI configuration, and the shim's wire format, without I/O."""

from __future__ import annotations

import json
import struct

import pytest

from ztunnel_py.cni.forward import MAGIC, ForwardError, decode_request, encode_response
from ztunnel_py.cni.install import (
    PLUGIN_TYPE,
    InstallError,
    chain,
    chained_entry,
    primary_config,
    unchain,
)

ENTRY = {"cniNodeSocket": "/var/run/ztunnel-py/cni/plugin.sock", "excludeNamespaces": ["x"]}
CALICO = {
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "calico", "ipam": {"type": "calico-ipam"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def test_the_runtime_reads_the_first_config_file_in_lexical_order() -> None:
    names = ["99-other.conf", "10-calico.conflist", "calico-kubeconfig", ".10-a.conflist.tmp"]
    assert primary_config(names) == "10-calico.conflist"
    assert primary_config(["README", "kubeconfig"]) is None


def test_chaining_appends_once_and_unchaining_restores_the_list() -> None:
    text = json.dumps(CALICO)
    change = chain("10-calico.conflist", text, ENTRY)
    assert (change.write, change.remove) == ("10-calico.conflist", None)
    chained = json.loads(change.text)
    assert chained["plugins"][:2] == CALICO["plugins"]
    assert chained["plugins"][2] == {**ENTRY, "type": PLUGIN_TYPE}
    # Installing again (a new pod, new settings) replaces our entry, never duplicates it.
    again = json.loads(chain("10-calico.conflist", change.text, {"enrollSocket": "/s"}).text)
    assert [p["type"] for p in again["plugins"]] == ["calico", "portmap", PLUGIN_TYPE]
    assert again["plugins"][2] == {"enrollSocket": "/s", "type": PLUGIN_TYPE}
    assert chained_entry("10-calico.conflist", change.text) == {**ENTRY, "type": PLUGIN_TYPE}
    removed = unchain("10-calico.conflist", change.text)
    assert removed is not None and json.loads(removed.text) == CALICO
    assert unchain("10-calico.conflist", text) is None
    assert chained_entry("10-calico.conflist", text) is None


def test_a_single_plugin_conf_becomes_a_list() -> None:
    conf = {"cniVersion": "1.0.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0"}
    change = chain("10-bridge.conf", json.dumps(conf), ENTRY)
    assert (change.write, change.remove) == ("10-bridge.conflist", "10-bridge.conf")
    assert json.loads(change.text) == {
        "cniVersion": "1.0.0",
        "name": "bridge-net",
        "plugins": [{"type": "bridge", "bridge": "cni0"}, {**ENTRY, "type": PLUGIN_TYPE}],
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "10-x.conflist is not JSON"),
        ("[1, 2]", "10-x.conflist is not a JSON object"),
        ('{"plugins": {"type": "a"}}', "'plugins' must be a list of objects"),
        ('{"name": "n"}', "has neither 'plugins' nor a plugin 'type'"),
    ],
)
def test_configs_we_cannot_chain_into_are_named(text: str, problem: str) -> None:
    with pytest.raises(InstallError, match=problem):
        chain("10-x.conflist", text, ENTRY)


def field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def request(env: list[bytes], stdin: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(env)) + b"".join(map(field, env)) + field(stdin)


def test_a_request_decodes_into_the_environment_and_stdin() -> None:
    got = decode_request(request([b"CNI_COMMAND=ADD", b"CNI_ARGS=A=1;B=2"], b'{"a": 1}'))
    assert got.env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2"}
    assert got.stdin == b'{"a": 1}'
    assert encode_response(11, b"out", b"") == (struct.pack(">I", 11) + field(b"out") + field(b""))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"HTTP/1.1 GET /", "bad magic"),
        (request([b"CNI_COMMAND=ADD"], b"{}")[:-1], "cut short"),
        (request([b"CNI_COMMAND=ADD"], b"{}") + b"x", "1 bytes after the request"),
        (request([b"PATH=/bin"], b"{}"), "is not CNI_KEY=VALUE"),
        (MAGIC + struct.pack(">I", 100000), "over the limit"),
        (MAGIC + struct.pack(">I", 0) + struct.pack(">I", 1 << 30), "over the limit"),
    ],
)
def test_malformed_requests_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ForwardError, match=problem):
        decode_request(data)
