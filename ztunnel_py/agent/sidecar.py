"""`ztunnel-py sidecar`: the mesh's proxy code in a dedicated single-workload mode, for sidecar
mode (the benchmark's comparison point, `ztunnel-py testbed up --mode sidecar`).

One process per pod, started inside the pod's network namespace as uid 1337 with no
capabilities, the way istio-proxy runs. Istio-style iptables rules in the pod (installed by
whoever starts the pod, as istio-init does; `testbed/sidecar.py`) REDIRECT the pod's outbound
TCP to 15001 and inbound TCP to 15006, except traffic of uid 1337 and inbound HBONE on 15008.
The proxy is the node agent's proxy (`run_proxy`, `PodManager`) with one pod in its own netns:
HBONE/mTLS to the other sidecars, plaintext passthrough for the rest, L4 policy inbound, the same
metrics, admin and readiness endpoints, its certificate from the CA with its node's credential.
Outbound connections to HTTP service ports go through the HTTP filter engine, as istio-proxy
routes them (`proxy/http.py`).
"""

from __future__ import annotations

import argparse
import sys

import trio

from ztunnel_py.agent.enroll import EnrollRefused
from ztunnel_py.agent.inpod import PodManager
from ztunnel_py.agent.proxy.outbound import Outbound
from ztunnel_py.linux.netns import NetnsError
from ztunnel_py.model.workload import pod_uid
from ztunnel_py.protocol.zds import PodInfo
from ztunnel_py.runtime.proxy import ProxyRuntime, prefetch_certificates, prepare, run_proxy
from ztunnel_py.telemetry.requests import RequestMetrics
from ztunnel_py.transport.podsockets import PodNetns


def main(args: argparse.Namespace) -> int:
    prepared = prepare(args, "sidecar", capture=False, proxy_type="sidecar")
    if isinstance(prepared, int):
        return prepared
    config, levels, state = prepared
    info = PodInfo(
        pod_uid(args.pod_namespace, args.pod_name),
        args.pod_name,
        args.pod_namespace,
        args.service_account,
    )

    async def start_pod(rt: ProxyRuntime) -> None:
        prefetch_certificates(rt, lambda w: w.uid == info.uid)
        outbound = Outbound(
            state, rt.certs, rt.pool, rt.metrics, config.connect_timeout, rt.nursery
        )
        pods = PodManager(
            config,
            state,
            rt.certs,
            outbound,
            rt.metrics,
            rt.nursery,
            rt.drain,
            None,
            redirected=True,
            persist=False,
            request_metrics=RequestMetrics(rt.registry),
        )
        rt.dump.add_section("workloadState", pods.dump)
        try:
            await pods.add(info, PodNetns.own())
        except (EnrollRefused, NetnsError, OSError) as e:
            failures.append(f"cannot serve pod {info.uid}: {e}")
            rt.nursery.cancel_scope.cancel()

    failures: list[str] = []
    trio.run(run_proxy, config, state, levels, start_pod)
    for failure in failures:
        print(f"ztunnel-py sidecar: {failure}", file=sys.stderr)
    return 1 if failures else 0
