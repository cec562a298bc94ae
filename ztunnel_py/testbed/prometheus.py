"""Prometheus in the testbed (`testbed up --prometheus`): Debian's `prometheus` binary, started by
the testbed in a network namespace of its own, scraping every proxy and the control plane.

As the control plane's, its namespace `<prefix>prom` is a port of the fabric bridge (`eth0`
10.250.0.3, peer `vprom`) with a route to each node's pod range via that node, so it reaches:

- job `ztunnel`: every node agent's `:15020/metrics` at the node's fabric address (label
  `node`);
- job `waypoint`: every waypoint pod's `:15020/metrics` at its pod IP (labels `namespace`,
  `pod`, `gateway`); the testbed rewrites this job's target file whenever a waypoint pod comes
  or goes (`testbed apply`/`delete` of a waypoint Gateway);
- job `sidecar` (sidecar mode): every sidecar's `:15020/metrics` at its pod IP (labels
  `namespace`, `pod`);
- job `controlplane`: the control plane's `:15014/metrics` (at its IPv6 address with
  `--controlplane-ipv6`: in dual stack the namespace also has fd00:10:250::3).

Discovery is file based (`file_sd_configs`): one JSON file per job under
`<state>/prometheus/targets/`, replaced atomically, which Prometheus watches (and re-reads every
few seconds besides), so no reload is needed when targets change. Scrapes and rule evaluation
run every 2 s, so a test or a canary analysis sees traffic within seconds; samples live in
`<state>/prometheus/data` (kept one day at most), the server listens on 10.250.0.3:9090 and is
ready when `/-/ready` answers 200. Measured here: ready 0.25 s after its start, about 45 MB
resident; the scrapes add a request every 2 s to each proxy.

The Debian package's own service is never used (the install script keeps it from starting):
the testbed runs its own process, with its own configuration and storage, and stops it with the
rest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ztunnel_py.linux.netns import entered
from ztunnel_py.model.ports import METRICS_PORT
from ztunnel_py.telemetry import promql
from ztunnel_py.testbed import namespaces
from ztunnel_py.testbed.errors import TestbedError
from ztunnel_py.testbed.process import ProcessRecord, wait_for
from ztunnel_py.testbed.resources import write_atomically
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import MODE_SIDECAR, Topology
from ztunnel_py.testbed.waypoints import WaypointPlan

PROMETHEUS = "prometheus"
BINARY = "prometheus"
IP = "10.250.0.3"
IP6 = "fd00:10:250::3"  # in dual stack too: the control plane may serve on IPv6 only
PORT = 9090
FABRIC_IFACE = "vprom"
SCRAPE_INTERVAL = "2s"
RETENTION = "1d"
JOBS = ("ztunnel", "waypoint", "sidecar", "controlplane")


def netns(prefix: str) -> str:
    return f"{prefix}prom"


def url() -> str:
    return f"http://{IP}:{PORT}"


def directory(state: State) -> Path:
    return state.state_dir / "prometheus"


def config_file(state: State) -> Path:
    return directory(state) / "prometheus.yml"


def targets_dir(state: State) -> Path:
    return directory(state) / "targets"


def binary() -> str:
    """The prometheus binary on PATH; TestbedError saying how to get it otherwise."""
    found = shutil.which(BINARY)
    if found is None:
        raise TestbedError(
            "--prometheus needs Debian's prometheus package: run scripts/install.sh "
            "(or `apt-get install --no-install-recommends prometheus`)"
        )
    return found


def config(state: State) -> dict[str, Any]:
    """prometheus.yml: one file-discovered job per kind of target."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_timeout": SCRAPE_INTERVAL,
                "metrics_path": "/metrics",
                "file_sd_configs": [
                    {"files": [str(targets_dir(state) / f"{job}.json")], "refresh_interval": "5s"}
                ],
            }
            for job in JOBS
        ],
    }


def _group(target: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"targets": [target], "labels": dict(labels)}


def targets(
    topology: Topology, state: State, waypoints: Iterable[WaypointPlan]
) -> dict[str, list[dict[str, Any]]]:
    """Each job's target groups (file_sd format) for what runs now."""
    sidecars = topology.mode == MODE_SIDECAR and state.mesh
    return {
        "ztunnel": [
            _group(f"{n.ip}:{METRICS_PORT}", {"node": n.name})
            for n in topology.nodes
            if state.ambient
        ],
        "waypoint": [
            _group(
                f"{w.ip}:{METRICS_PORT}",
                {"namespace": w.namespace, "pod": w.name, "gateway": w.gateway},
            )
            for w in waypoints
        ],
        "sidecar": [
            _group(f"{p.ip}:{METRICS_PORT}", {"namespace": p.namespace, "pod": p.name})
            for p in topology.pods
            if sidecars and p.ambient
        ],
        "controlplane": [_group(str(topology.controlplane_monitoring), {})] if state.mesh else [],
    }


def write_targets(topology: Topology, state: State, waypoints: Sequence[WaypointPlan]) -> None:
    """(Re)write every job's target file; Prometheus picks the change up by itself."""
    directory_ = targets_dir(state)
    directory_.mkdir(parents=True, exist_ok=True)
    for job, groups in targets(topology, state, waypoints).items():
        path = directory_ / f"{job}.json"
        write_atomically(path, json.dumps(groups, indent=2) + "\n")


def record(topology: Topology, state: State) -> ProcessRecord:
    """How the testbed's Prometheus runs (its files written first)."""
    directory(state).mkdir(parents=True, exist_ok=True)
    config_file(state).write_text(yaml.safe_dump(config(state), sort_keys=False))
    write_targets(topology, state, state.waypoints)
    return ProcessRecord(
        name=PROMETHEUS,
        netns=netns(state.prefix),
        argv=[
            binary(),
            f"--config.file={config_file(state)}",
            f"--storage.tsdb.path={directory(state) / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={IP}:{PORT}",
            "--web.enable-lifecycle",
        ],
        log=str(state.log_dir / "prometheus.log"),
    )


def connect_in(ns: str) -> promql.Connect:
    """A socket factory for `promql`: TCP sockets made inside network namespace `ns` (the
    caller stays where it is; a socket keeps the namespace it was made in)."""

    def connect(host: str, port: int, timeout: float) -> socket.socket:
        fd = os.open(namespaces.netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with entered(fd):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            os.close(fd)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        return sock

    return connect


def wait_ready(state: State, record_: ProcessRecord, timeout: float) -> None:
    connect = connect_in(netns(state.prefix))
    wait_for(
        lambda: promql.is_ready(url(), timeout=1.0, connect=connect),
        [record_],
        timeout,
        f"Prometheus to be ready on {url()}",
    )
