"""Sidecar mode in the testbed: what istio-init and the injector do for each pod of the mesh.

For every pod of a mesh namespace (the pods ambient mode would enroll), in order:

1. Istio-style iptables rules in the pod's netns (`RULES`, the chains istio-iptables creates):
   inbound TCP is REDIRECTed to 15006 except HBONE (15008) and the proxy's own metrics and
   readiness ports; outbound TCP is REDIRECTed to 15001 except traffic of the proxy's uid and
   gid (1337) and to 127.0.0.1.
2. A credentials directory the proxy's uid can read: a copy of its node's CA credential and of
   the mesh's root certificate (the control plane's files stay root's).
3. `ztunnel-py sidecar` started in the pod's netns under `setpriv` as uid/gid 1337 with no
   capabilities, the way istio-proxy runs; ready when its :15021/healthz/ready answers 200.

The pods' Kubernetes objects say so (`resources.py`): their namespaces are labelled
`istio-injection: enabled` instead of ambient, and each pod carries `sidecar.istio.io/status`
and `networking.istio.io/tunnel: http`, so the control plane gives them HBONE as it gives
ambient pods.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.ports import (
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    METRICS_PORT,
    OUTBOUND_PORT,
    READINESS_PORT,
)
from ztunnel_py.testbed import mesh
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord, wait_for
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import PodPlan, Topology

PROXY_UID = 1337
# the proxy's own ports that callers outside the pod reach directly (metrics, readiness)
EXCLUDED_INBOUND_PORTS = (HBONE_PORT, METRICS_PORT, READINESS_PORT)

RULES = "\n".join(
    [
        "*nat",
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        *(f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in EXCLUDED_INBOUND_PORTS),
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        f"-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN",
        f"-A ISTIO_OUTPUT -m owner --gid-owner {PROXY_UID} -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}",
        "COMMIT",
        "",
    ]
)


def sidecar_name(pod: str) -> str:
    return f"sidecar/{pod}"


def sidecar_log(state: State, pod: str) -> str:
    return str(state.log_dir / f"sidecar-{pod}.log")


def credentials_dir(state: State, pod: str) -> Path:
    return state.state_dir / "sidecars" / pod


def install_rules(pod: PodPlan) -> None:
    """The pod's iptables REDIRECT rules (replacing the nat table, as istio-init does)."""
    done = subprocess.run(
        ["ip", "netns", "exec", pod.netns, "iptables-restore", "--wait"],
        input=RULES,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        raise TestbedError(
            f"iptables-restore in pod {pod.name} failed: {done.stderr.strip()}; sidecar mode "
            "needs iptables with the nat table, REDIRECT and the owner match (install iptables)"
        )


def _credentials(state: State, pod: PodPlan) -> tuple[str, str]:
    """(token file, root certificate) copies that uid 1337 can read."""
    directory = credentials_dir(state, pod.name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = directory / "token"
    root = directory / "root-cert.pem"
    shutil.copyfile(mesh.token_file(state, pod.node), token)
    shutil.copyfile(mesh.root_cert(state), root)
    for path in (directory, token, root):
        os.chown(path, PROXY_UID, PROXY_UID)
    token.chmod(0o600)
    return str(token), str(root)


def sidecar_record(state: State, pod: PodPlan, controlplane: SocketAddr) -> ProcessRecord:
    token, root = _credentials(state, pod)
    return ProcessRecord(
        name=sidecar_name(pod.name),
        netns=pod.netns,
        argv=[
            "setpriv",
            f"--reuid={PROXY_UID}",
            f"--regid={PROXY_UID}",
            "--clear-groups",
            "--",
            *mesh.ztunnel_py(
                "sidecar",
                "--node",
                pod.node,
                "--pod-name",
                pod.name,
                "--pod-namespace",
                pod.namespace,
                "--service-account",
                pod.service_account,
                "--instance-ip",
                pod.ip,
                "--xds-address",
                str(controlplane),
                "--ca-address",
                str(controlplane),
                "--ca-root-cert",
                root,
                "--auth-token",
                token,
                "--secret-ttl",
                state.secret_ttl,
            ),
        ],
        log=sidecar_log(state, pod.name),
    )


def start(
    topology: Topology,
    state: State,
    launch: mesh.Launch,
    progress: mesh.Progress,
    timeout: float,
) -> None:
    """The control plane, then iptables and a sidecar in every pod of the mesh namespaces
    (IPv4 only: `Testbed.up` refuses sidecar mode with dual stack)."""
    mesh.start_controlplane(topology, state, launch, progress, timeout)
    started: list[tuple[PodPlan, ProcessRecord]] = []
    for node in topology.nodes:
        mesh.issue_token(state, node)
    for pod in topology.pods:
        if not pod.ambient:
            continue
        install_rules(pod)
        record = sidecar_record(state, pod, topology.controlplane_address)
        launch(record)
        started.append((pod, record))
    for pod, record in started:
        wait_for(
            functools.partial(mesh.http_ready, pod.netns),
            [record],
            timeout,
            f"the sidecar of pod {pod.name} to be ready",
        )
    skipped = [p.name for p in topology.pods if not p.ambient]
    progress(
        f"  {len(started)} sidecars ready (iptables REDIRECT to {OUTBOUND_PORT}/"
        f"{INBOUND_PLAINTEXT_PORT}, uid {PROXY_UID})"
        + (f"; no sidecar in {', '.join(skipped)} (namespace not in the mesh)" if skipped else "")
    )
