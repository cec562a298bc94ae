"""The configuration pipeline as the control plane app uses it: picks the sources from the
command line (`--config-dir`, `--kubernetes`, or the development `--local-config`), and exposes
one `SnapshotSource` for the xDS server and one `WorkloadRegistry` for the CA.

Sources run in daemon threads (file polling, Kubernetes list/watch); `start` loads what is
there before returning, so the first xDS client already sees the configuration.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztunnel_py.controlplane.config import ControlPlaneConfig
from ztunnel_py.controlplane.debugviews import waypoints_view
from ztunnel_py.controlplane.jwks import JwksResolver
from ztunnel_py.controlplane.registry import EmptyRegistry, WorkloadRegistry
from ztunnel_py.controlplane.snapshot import EMPTY_SNAPSHOT, MeshSnapshot, SnapshotSource
from ztunnel_py.controlplane.sources.files import DirectorySource
from ztunnel_py.controlplane.sources.kube import KubeSource
from ztunnel_py.controlplane.sources.localconfig import LocalConfigSource
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import MeshOptions
from ztunnel_py.yamlschema.problems import Severity

log = logging.getLogger("ztunnel_py.controlplane.pipeline")


class _NoSnapshots:
    """No configuration source: an empty mesh, forever."""

    def current(self) -> MeshSnapshot:
        return EMPTY_SNAPSHOT

    def subscribe(self, callback: Callable[[MeshSnapshot], None]) -> Callable[[], None]:
        return lambda: None


@dataclass
class Pipeline:
    snapshots: SnapshotSource
    registry: WorkloadRegistry
    store: ConfigStore | None = None
    jwks: JwksResolver | None = None
    # the Kubernetes API client, when the configuration comes from a cluster
    kube: Any = None
    # run in order by `start`: each loads its source, then watches it (in a thread of its own)
    starters: list[Callable[[threading.Event], None]] = field(default_factory=list)
    # run by `join`, for sources that must be told to stop besides the event
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, stop: threading.Event) -> None:
        """Load the configuration, then keep watching it until `stop` is set."""
        for starter in self.starters:
            starter(stop)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the sources to stop (after `stop` was set)."""
        for stopper in self.stoppers:
            stopper()
        for thread in self._threads:
            thread.join(timeout)

    def spawn(
        self, target: Callable[[threading.Event], None], stop: threading.Event, name: str
    ) -> None:
        """Run `target(stop)` in a daemon thread that `join` waits for."""
        thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def waypoints(self) -> dict[str, Any]:
        """`/debug/waypoints`: per waypoint, its address, pods, HttpServices and policies."""
        return waypoints_view(self.snapshots.current())

    def debug(self) -> dict[str, Any]:
        """`/debug/config`: what is loaded and every current validation problem."""
        snapshot = self.snapshots.current()
        out: dict[str, Any] = {
            "version": snapshot.version,
            "workloads": len(snapshot.workloads),
            "services": len(snapshot.services),
            "policies": len(snapshot.policies),
            "waypoints": len(snapshot.waypoints),
            "httpServices": len(snapshot.http_services),
        }
        if self.store is not None:
            diagnostics = self.store.diagnostics()
            out["resources"] = dict(Counter(key.kind for key in self.store.resources()))
            for severity in Severity:
                out[f"{severity.value}s"] = [str(d) for d in diagnostics if d.severity is severity]
        if self.jwks is not None:
            out["jwks"] = self.jwks.describe()
        return out


def open_pipeline(config: ControlPlaneConfig) -> Pipeline:
    """The sources `config` names; ValueError if they cannot be used."""
    if config.local_config is not None:
        return _local_config(config.local_config)
    if config.config_dir is None and not config.kubernetes:
        log.warning(
            "no --config-dir, --kubernetes or --local-config: no workload is known, every "
            "signing request is refused"
        )
        return Pipeline(_NoSnapshots(), EmptyRegistry())
    options = MeshOptions(trust_domain=config.trust_domain, root_namespace=config.root_namespace)
    jwks = JwksResolver()
    store = ConfigStore(options, keys=jwks)
    jwks.on_change = store.refresh
    pipeline = Pipeline(store, store, store, jwks)

    def start_jwks(stop: threading.Event) -> None:
        pipeline.spawn(jwks.run, stop, "jwks-refresh")

    pipeline.starters.append(start_jwks)
    pipeline.stoppers.append(jwks.stop_waiting)
    config_dir = config.config_dir
    if config_dir is not None:
        directory = DirectorySource(config_dir, store)

        def start_files(stop: threading.Event) -> None:
            directory.sync()
            log.info("loaded %s: version %d", config_dir, store.current().version)
            pipeline.spawn(directory.run, stop, "config-dir")

        pipeline.starters.append(start_files)
    if config.kubernetes:
        pipeline.kube = _kube_client(config.kubeconfig)
        source = KubeSource(store, pipeline.kube)

        def start_kube(stop: threading.Event) -> None:
            source.start()
            source.synced.wait(source.initial_sync_timeout + 5)

        pipeline.starters.append(start_kube)
        pipeline.stoppers.append(source.stop)
    return pipeline


def _kube_client(kubeconfig: Path | None) -> Any:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return client.ApiClient()
        except config.ConfigException:
            pass
    try:
        path = None if kubeconfig is None else str(kubeconfig)
        return config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError) as e:
        raise ValueError(f"--kubernetes: cannot load credentials: {e}") from None


def _local_config(path: Path) -> Pipeline:
    source = LocalConfigSource(path)
    source.reload_if_changed()
    pipeline = Pipeline(source, source)

    def start(stop: threading.Event) -> None:
        pipeline.spawn(source.watch, stop, "local-config")

    pipeline.starters.append(start)
    return pipeline
