"""`ztunnel-py cni`: the CNI plugin's actions, talking to the node agent's enrollment socket.

What each command does (parsing and the enrollment rule are in `spec.py`):

- ADD: if the pod is to be meshed, enroll it (`AddWorkload` with the pod's netns fd) and fail
  if the agent refuses or cannot be reached, so that a pod never starts unmeshed; in
  `kubeconfig` mode, then annotate it `ambient.istio.io/redirection: enabled` in the API server
  (failing if that fails: the control plane sends the pod as HBONE only once it is there); then
  pass `prevResult` through as the result. (Without an API server, the testbed sets the
  annotation in its place.)
- DEL: unenroll the pod and clear the annotation. A pod the agent does not know is not an error
  (DEL is idempotent), and neither is an unreachable agent or API server: a pod being deleted
  must not wait for the mesh, and a restarted agent drops pods whose namespace is gone.
- CHECK: for a pod that should be meshed, the namespace must exist and the agent must answer.
- STATUS: ready (exit 0) when the agent answers on its socket, error 50 otherwise.
- GC: nothing to collect: the agent owns enrollment state and drops pods whose namespace died.
- VERSION: the spec versions we speak.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import traceback
from collections.abc import Mapping

from ztunnel_py.cni import kube
from ztunnel_py.cni.enroll import EnrollError, enroll_pod, unenroll_pod
from ztunnel_py.cni.spec import (
    DEFAULT_ERROR_VERSION,
    ENROLLMENT_REFUSED,
    MAX_STDIN,
    NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
    Command,
    Invocation,
    PodMeta,
    PodRef,
    add_result,
    declared_version,
    parse_command,
    parse_invocation,
    version_answer,
)
from ztunnel_py.protocol.zds import MAX_MESSAGE, ZdsError, decode_hello

ENROLL_TIMEOUT = 30.0
PROBE_TIMEOUT = 5.0
INTERNAL_ERROR = 199
# The agent's NACK for a DelWorkload of a pod it does not have (agent/inpod.py).
UNKNOWN_POD_NACK = "unknown pod "


def _warn(line: str) -> None:
    print(f"ztunnel-py cni: {line}", file=sys.stderr, flush=True)


def agent_problem(socket_path: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the agent does not answer on its enrollment socket, or None if it greets us."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            decode_hello(sock.recv(MAX_MESSAGE))
    except (OSError, ZdsError) as e:
        return f"{socket_path}: {e}"
    return None


def _meta(inv: Invocation, pod: PodRef) -> PodMeta:
    if pod.namespace in inv.config.exclude_namespaces:
        return PodMeta()  # never enrolled: no need to ask anyone
    if inv.config.kubeconfig:
        return kube.lookup(inv.config.kubeconfig, pod)
    return inv.config.static_meta(pod)


def _require_netns(inv: Invocation) -> None:
    if not os.path.exists(inv.netns):
        raise CniError(
            UNKNOWN_CONTAINER, f"network namespace {inv.netns} (CNI_NETNS) does not exist"
        )


def _unreachable(socket_path: str, cause: str) -> CniError:
    return CniError(
        TRY_AGAIN_LATER,
        f"the ztunnel-py agent is not reachable on {socket_path}",
        f"{cause}; the pod is in an ambient namespace and must not start outside the mesh: "
        "is the agent running on this node?",
    )


def _add(inv: Invocation) -> str:
    pod = inv.pod
    if pod is None:
        return add_result(inv.config)
    meta = _meta(inv, pod)
    if not meta.enroll:
        return add_result(inv.config)
    _require_netns(inv)
    socket_path = inv.config.enroll_socket
    try:
        enroll_pod(
            socket_path=socket_path,
            uid=pod.uid,
            name=pod.name,
            namespace=pod.namespace,
            service_account=meta.service_account,
            netns_path=inv.netns,
            timeout=ENROLL_TIMEOUT,
        )
    except EnrollError as e:
        # cni.enroll chains the socket error when the exchange failed; a NACK has no cause.
        if e.__cause__ is not None:
            raise _unreachable(socket_path, str(e)) from None
        raise CniError(
            ENROLLMENT_REFUSED, f"the agent refused to enroll pod {pod.key}", str(e)
        ) from None
    except OSError as e:
        raise CniError(UNKNOWN_CONTAINER, f"cannot open CNI_NETNS {inv.netns}", str(e)) from None
    if inv.config.kubeconfig:
        kube.set_redirection(inv.config.kubeconfig, pod, True)
    return add_result(inv.config)


def _del(inv: Invocation) -> str:
    pod = inv.pod
    if pod is None:
        return ""
    try:
        unenroll_pod(inv.config.enroll_socket, pod.uid, timeout=ENROLL_TIMEOUT)
    except EnrollError as e:
        if e.__cause__ is not None:
            _warn(f"DEL {pod.key}: agent not reachable ({e}); nothing to undo here")
        elif not str(e).startswith(UNKNOWN_POD_NACK):
            raise CniError(
                ENROLLMENT_REFUSED, f"the agent refused to unenroll pod {pod.key}", str(e)
            ) from None
    if inv.config.kubeconfig:
        try:
            kube.set_redirection(inv.config.kubeconfig, pod, False)
        except CniError as e:
            _warn(f"DEL {pod.key}: {e}")
    return ""


def _check(inv: Invocation) -> str:
    pod = inv.pod
    if pod is None or not _meta(inv, pod).enroll:
        return ""
    _require_netns(inv)
    problem = agent_problem(inv.config.enroll_socket)
    if problem is not None:
        raise _unreachable(inv.config.enroll_socket, problem)
    return ""


def _status(inv: Invocation) -> str:
    problem = agent_problem(inv.config.enroll_socket)
    if problem is not None:
        raise CniError(NOT_AVAILABLE, "the ztunnel-py agent is not reachable", problem)
    return ""


def handle(env: Mapping[str, str], stdin: bytes) -> str:
    """Carry out one request; its stdout text on success, CniError otherwise."""
    command = parse_command(env)
    if command is Command.VERSION:
        return version_answer(stdin)
    inv = parse_invocation(command, env, stdin)
    if command is Command.ADD:
        return _add(inv)
    if command is Command.DEL:
        return _del(inv)
    if command is Command.CHECK:
        return _check(inv)
    if command is Command.STATUS:
        return _status(inv)
    return ""


def run(env: Mapping[str, str], stdin: bytes) -> tuple[str, int]:
    """(stdout text, exit status) of one request: the spec's error object on any failure."""
    try:
        return handle(env, stdin), 0
    except CniError as e:
        return e.to_json(declared_version(stdin)), 1
    except Exception as e:
        # Whatever happens, the runtime must get an error object on stdout, not a traceback.
        # An internal error is a bug in this plugin, and its one line does not say where: the
        # traceback goes to stderr, which a runtime logs next to the error (the testbed adds it
        # to its failure), so that even a rare one can be traced from its first occurrence.
        traceback.print_exc(file=sys.stderr)
        error = CniError(INTERNAL_ERROR, "internal error in ztunnel-py cni", repr(e))
        return error.to_json(declared_version(stdin)), 1


def main(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        parse_command(env)
    except CniError as e:
        # Without CNI_COMMAND this is a person at a terminal, not a runtime: do not wait on stdin.
        print(e.to_json(DEFAULT_ERROR_VERSION))
        return 1
    stdin = b"" if sys.stdin.isatty() else sys.stdin.buffer.read(MAX_STDIN + 1)
    out, code = run(env, stdin)
    if out:
        print(out, flush=True)
    return code
