"""The CNI plugin's request handling without I/O: environment, stdin, results, errors, decisions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztunnel_py.cni.plugin import run
from ztunnel_py.cni.spec import (
    DEFAULT_ENROLL_SOCKET,
    SUPPORTED_VERSIONS,
    CniError,
    Command,
    PodMeta,
    PodRef,
    add_result,
    declared_version,
    parse_cni_args,
    parse_command,
    parse_config,
    parse_invocation,
    should_enroll,
    supports,
    version_answer,
)

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "veth0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/p"},
    ],
    "ips": [{"address": "10.244.1.10/32", "gateway": "10.244.1.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
    "dns": {},
}
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def config(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ztunnel-py", **extra}


def stdin(**extra: Any) -> bytes:
    return json.dumps(config(**extra)).encode()


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "0123abcd",
        "CNI_NETNS": "/run/netns/p",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1;"
        "K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=5e1f",
    }
    base.update(extra)
    return base


def error_of(stdout: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(stdout)
    assert set(body) <= {"cniVersion", "code", "msg", "details"}
    return body


def test_invocation_reads_every_cni_variable() -> None:
    inv = parse_invocation(Command.ADD, env(), stdin(prevResult=PREV))
    assert inv.container_id == "0123abcd"
    assert inv.netns == "/run/netns/p" and inv.ifname == "eth0"
    assert inv.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert inv.pod == PodRef("apps", "web-1", "5e1f")
    assert inv.pod.uid == "Kubernetes//Pod/apps/web-1"
    assert inv.config.enroll_socket == DEFAULT_ENROLL_SOCKET
    assert inv.config.prev_result == PREV


def test_add_result_is_prev_result_unchanged() -> None:
    cfg = parse_config(stdin(prevResult=PREV))
    assert json.loads(add_result(cfg)) == PREV


def test_add_result_gets_the_config_version_if_the_runtime_left_it_out() -> None:
    prev = {k: v for k, v in PREV.items() if k != "cniVersion"}
    cfg = parse_config(stdin(cniVersion="0.4.0", prevResult=prev))
    assert json.loads(add_result(cfg)) == {**prev, "cniVersion": "0.4.0"}


def test_version_answer_lists_versions_and_echoes_a_known_request() -> None:
    answer = json.loads(version_answer(b'{"cniVersion": "0.4.0"}'))
    assert answer["cniVersion"] == "0.4.0"
    assert {"0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(answer["supportedVersions"])
    assert json.loads(version_answer(b""))["cniVersion"] == "1.1.0"
    assert json.loads(version_answer(b"garbage"))["cniVersion"] == "1.1.0"


def test_cni_args_pairs() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("A=1;B=;C=x=y;") == {"A": "1", "B": "", "C": "x=y"}
    with pytest.raises(CniError, match="not KEY=VALUE") as err:
        parse_cni_args("K8S_POD_NAME")
    assert err.value.code == 4


@pytest.mark.parametrize(
    ("ns", "pod", "expected"),
    [
        (AMBIENT, {}, True),
        (AMBIENT, {"istio.io/dataplane-mode": "none"}, False),
        ({}, {}, False),
        ({"istio.io/dataplane-mode": "none"}, {}, False),
        ({"istio.io/dataplane-mode": "sidecar"}, {"app": "x"}, False),
    ],
)
def test_ambient_namespace_enrolls_unless_the_pod_opts_out(
    ns: dict[str, str], pod: dict[str, str], expected: bool
) -> None:
    assert should_enroll(ns, pod) is expected


def test_static_tables_give_labels_and_service_account() -> None:
    cfg = parse_config(
        stdin(
            namespaceLabels={"apps": AMBIENT, "legacy": {}},
            pods={
                "apps/web-1": {"serviceAccount": "web"},
                "apps/probe": {"labels": {"istio.io/dataplane-mode": "none"}},
            },
        )
    )
    web = cfg.static_meta(PodRef("apps", "web-1"))
    assert web == PodMeta("web", {}, AMBIENT) and web.enroll
    assert not cfg.static_meta(PodRef("apps", "probe")).enroll
    other = cfg.static_meta(PodRef("apps", "unlisted"))
    assert other.service_account == "default" and other.enroll
    assert not cfg.static_meta(PodRef("legacy", "legacy-1")).enroll
    assert not cfg.static_meta(PodRef("unknown-ns", "x")).enroll


def test_without_pod_args_there_is_no_pod() -> None:
    inv = parse_invocation(Command.ADD, env(CNI_ARGS="IgnoreUnknown=1"), stdin(prevResult=PREV))
    assert inv.pod is None


def test_commands_need_a_spec_version_that_has_them() -> None:
    assert supports("0.3.1", Command.ADD) and not supports("0.3.1", Command.CHECK)
    assert supports("0.4.0", Command.CHECK) and not supports("1.0.0", Command.STATUS)
    assert supports("1.1.0", Command.GC)
    with pytest.raises(CniError, match="does not define CHECK") as err:
        parse_invocation(Command.CHECK, env(), stdin(cniVersion="0.3.1", prevResult=PREV))
    assert err.value.code == 1


@pytest.mark.parametrize(
    ("command", "environ", "body", "code", "message"),
    [
        ("ADD", {}, b"", 6, "not JSON"),
        ("ADD", {}, b"\xff\xfe garbage", 6, "not JSON"),
        ("ADD", {}, b"[1, 2]", 6, "not a JSON object"),
        ("ADD", {}, b'{"name": "n", "type": "t"}', 7, "no cniVersion"),
        ("ADD", {}, stdin(cniVersion="9.9.9"), 1, "9.9.9 is not supported"),
        ("ADD", {}, stdin(name="bad name!"), 7, "needs a 'name'"),
        ("ADD", {}, stdin(), 7, "ADD without prevResult"),
        ("CHECK", {}, stdin(), 7, "CHECK without prevResult"),
        ("ADD", {"CNI_NETNS": ""}, stdin(prevResult=PREV), 4, "CNI_NETNS is required"),
        ("ADD", {"CNI_CONTAINERID": ""}, stdin(prevResult=PREV), 4, "CNI_CONTAINERID is required"),
        ("ADD", {"CNI_CONTAINERID": "a/b"}, stdin(prevResult=PREV), 4, "outside"),
        ("DEL", {"CNI_IFNAME": ""}, stdin(), 4, "CNI_IFNAME is required"),
        ("ADD", {"CNI_ARGS": "oops"}, stdin(prevResult=PREV), 4, "not KEY=VALUE"),
        ("ADD", {}, stdin(prevResult=PREV, enrollSocket=3), 7, "'enrollSocket' must be a string"),
        ("ADD", {}, stdin(prevResult=[]), 7, "'prevResult' must be an object"),
        ("ADD", {}, stdin(namespaceLabels={"a": {"k": 1}}), 7, "map strings to strings"),
        ("ADD", {}, stdin(pods={"web-1": {}}), 7, "keyed NAMESPACE/NAME"),
        ("ADD", {}, stdin(pods={"a/b": {"sa": "x"}}), 7, "unknown keys"),
        (
            "ADD",
            {},
            stdin(kubeconfig="/k", namespaceLabels={}, prevResult=PREV),
            7,
            "both 'kubeconfig'",
        ),
        ("STATUS", {}, stdin(), 1, "does not define STATUS"),
        ("FROB", {}, stdin(), 4, "unknown CNI_COMMAND"),
        ("", {}, stdin(), 4, "CNI_COMMAND is not set"),
    ],
)
def test_bad_requests_get_the_cni_error_object(
    command: str, environ: dict[str, str], body: bytes, code: int, message: str
) -> None:
    out, status = run(env(command, **environ), body)
    assert status != 0
    error = error_of(out)
    assert error["code"] == code
    assert message in error["msg"]
    # The request's version when we speak it (every body here says 1.0.0 or is unusable).
    assert error["cniVersion"] == "1.0.0"


def test_error_object_carries_the_request_version() -> None:
    out, status = run(env("ADD"), stdin(cniVersion="0.4.0"))
    assert status == 1
    assert error_of(out) == {
        "cniVersion": "0.4.0",
        "code": 7,
        "msg": "ADD without prevResult",
        "details": error_of(out)["details"],
    }


def test_del_without_netns_and_gc_need_nothing_else() -> None:
    inv = parse_invocation(Command.DEL, env("DEL", CNI_NETNS=""), stdin())
    assert inv.netns == "" and inv.pod is not None
    gc = {"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}
    out, status = run(gc, stdin(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []}))
    assert (out, status) == ("", 0)


def test_requests_that_need_no_pod_pass_through_without_touching_the_agent() -> None:
    # No K8S_POD_* args (not a Kubernetes pod), or a namespace without the ambient label: the
    # socket named here does not exist, and is never needed.
    absent = {"enrollSocket": "/nonexistent/ztunnel.sock"}
    out, status = run(env(CNI_ARGS=""), stdin(prevResult=PREV, **absent))
    assert status == 0 and json.loads(out) == PREV
    labels: dict[str, Any] = {"namespaceLabels": {"apps": {}}}
    out, status = run(env(), stdin(prevResult=PREV, **absent, **labels))
    assert status == 0 and json.loads(out) == PREV
    out, status = run(env("CHECK"), stdin(prevResult=PREV, **absent, **labels))
    assert (out, status) == ("", 0)


def test_parse_command_names_the_choices() -> None:
    assert parse_command({"CNI_COMMAND": "VERSION"}) is Command.VERSION
    with pytest.raises(CniError) as err:
        parse_command({"CNI_COMMAND": "add"})
    assert err.value.details == "expected one of ADD, DEL, CHECK, VERSION, STATUS, GC"


def test_kubeconfig_mode_fails_closed_with_a_lookup_error() -> None:
    # No API server here: a kubeconfig that cannot be loaded must refuse the pod, not skip it.
    out, status = run(env(), stdin(prevResult=PREV, kubeconfig="/nonexistent/kubeconfig"))
    assert status == 1
    error = error_of(out)
    assert error["code"] == 101
    assert error["msg"] == "cannot load kubeconfig /nonexistent/kubeconfig"


# --- whatever the runtime hands in, the answer is a result or the spec's error object ---------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
_config_keys = st.sampled_from(
    [
        "cniVersion",
        "name",
        "type",
        "prevResult",
        "enrollSocket",
        "kubeconfig",
        "namespaceLabels",
        "pods",
        "x",
    ]
)
_configs = st.dictionaries(
    _config_keys,
    st.sampled_from([*SUPPORTED_VERSIONS, "9.9.9", "k8s-pod-network", "a/b"]) | _json_values,
    max_size=7,
).map(lambda body: json.dumps(body).encode())
_nested = st.tuples(st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":'])).map(
    lambda t: t[1] * t[0]
)
_stdins = _configs | st.binary(max_size=200) | _nested
# Error codes of the CNI spec and this plugin's own (100+); INTERNAL_ERROR (199) is not one.
_KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["ADD", "DEL", "CHECK", "GC", "VERSION"]),
    st.dictionaries(
        st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]),
        st.text(max_size=12),
    ),
    _stdins,
)
def test_any_request_gets_a_result_or_the_cni_error_object(
    command: str, environ: dict[str, str], body: bytes
) -> None:
    # No K8S_POD_* in CNI_ARGS: no request here is for a pod, so none reaches for the agent.
    environ["CNI_ARGS"] = environ.get("CNI_ARGS", "").replace("K8S_POD", "")
    out, status = run(env(command, **environ), body)
    if status != 0:
        error = error_of(out)
        assert error["code"] in _KNOWN_CODES and error["msg"]
        assert error["cniVersion"] == declared_version(body)
    elif command == "VERSION":
        assert json.loads(out)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    elif command == "ADD":
        assert json.loads(out) == {
            "cniVersion": declared_version(body),
            **json.loads(body)["prevResult"],
        }
    else:
        assert out == ""


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ("K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web\nforged", "K8S_POD_NAME: 'web\\nforged'"),
        ("K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1\n", "K8S_POD_NAME: 'web-1\\n'"),
        ("K8S_POD_NAMESPACE=Apps;K8S_POD_NAME=web-1", "K8S_POD_NAMESPACE: 'Apps'"),
        ("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web-1", "K8S_POD_NAMESPACE: 'a.b'"),
        (f"K8S_POD_NAMESPACE=apps;K8S_POD_NAME={'w' * 254}", "K8S_POD_NAME: 'www"),
        ("K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1;K8S_POD_UID=x\x1b[2J", "K8S_POD_UID"),
    ],
)
def test_pod_names_are_checked_as_kubernetes_checks_them(args: str, problem: str) -> None:
    out, status = run(env("ADD", CNI_ARGS=args), stdin(prevResult=PREV))
    assert status != 0
    error = error_of(out)
    assert error["code"] == 4 and error["msg"].startswith(f"CNI_ARGS {problem}")
    assert "\n" not in error["msg"]


def test_a_valid_dotted_pod_name_passes() -> None:
    inv = parse_invocation(
        Command.ADD,
        env("ADD", CNI_ARGS="K8S_POD_NAMESPACE=apps;K8S_POD_NAME=web-1.v2;K8S_POD_UID=5e1f-0a"),
        stdin(prevResult=PREV),
    )
    assert inv.pod == PodRef("apps", "web-1.v2", "5e1f-0a")


def test_an_internal_error_keeps_its_traceback_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bug in the plugin (here a stand-in for ADD that unpacks a missing result) must still
    # give the runtime an error object, and leave on stderr where it happened: the object's
    # one line ("cannot unpack non-iterable NoneType object") does not say.
    def broken_add(inv: Any) -> str:
        found: Any = None
        interface, ips = found
        return str((interface, ips))

    monkeypatch.setattr("ztunnel_py.cni.plugin._add", broken_add)
    out, status = run(env(), stdin(prevResult=PREV))
    assert status == 1
    error = error_of(out)
    assert error["code"] == 199
    assert error["details"] == "TypeError('cannot unpack non-iterable NoneType object')"
    stderr = capsys.readouterr().err
    assert stderr.startswith("Traceback (most recent call last):")
    assert "in broken_add" in stderr
    assert stderr.rstrip().endswith("TypeError: cannot unpack non-iterable NoneType object")
