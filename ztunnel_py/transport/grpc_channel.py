"""The agent's gRPC/TLS channel to the control plane, shared by the CA and xDS clients.

As ztunnel does for both (docs/istio-compat.md, "Workload xDS" and "CA"): the server certificate is
verified against root certificates (`RootCerts`: a file, the system store or inline PEM) under an
overridable expected hostname; the channel is rebuilt when the roots change. Every call carries
`clusterid`, the operator's extra headers (`XDS_HEADER_*` / `CA_HEADER_*`) and, when a token file is
configured, `authorization: Bearer <token>` with the token re-read per call (projected Kubernetes
tokens rotate). grpcio blocks: use this from worker threads.

The channel's connectivity is watched for as long as it exists. grpcio only makes progress on a
connection attempt while some thread polls the channel; calls that fail fast while it
reconnects poll nothing, so without the watch a restarted control plane was never reached again
from a process that does not also run a gRPC server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.workload import DEFAULT_CLUSTER_ID
from ztunnel_py.transport.roots import RootCerts, RootCertsError

DEFAULT_CONTROL_PLANE_HOSTNAME = "istiod.istio-system.svc"

ChannelOption = tuple[str, str | int]
Metadata = tuple[tuple[str, str], ...]

# Callers own retry timing; grpc's own reconnect backoff (1 s growing to 120 s) would fail
# their retries without even trying to connect. grpc takes the "minimum reconnect backoff" as
# its connect timeout (TCP, TLS and HTTP/2 setup): 5 s, as ztunnel's.
_RECONNECT_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# A little longer than grpcio's connectivity watch period (`_poll_connectivity` waits 0.2 s).
_WATCH_PERIOD = 0.25


class ChannelError(Exception):
    """The channel or the call metadata cannot be built (unreadable roots or token)."""


class ControlPlaneChannel:
    def __init__(
        self,
        address: SocketAddr,
        roots: RootCerts | Path,
        token_file: Path | None,
        *,
        hostname: str = DEFAULT_CONTROL_PLANE_HOSTNAME,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        purpose: str = "control plane",
        options: Sequence[ChannelOption] = (),
        headers: Metadata = (),
    ) -> None:
        """`roots`: a `RootCerts`, or a path meaning a root certificate file. `purpose` names
        the service in error messages ("CA", "xDS"); `options` are extra grpc channel options,
        replacing defaults of the same name; `headers` go on every call."""
        self.address = address
        self._roots_source = RootCerts.of(roots)
        self._headers = tuple(headers)
        self._token_file = token_file
        self._hostname = hostname
        self._cluster_id = cluster_id
        self._purpose = purpose
        self._options = tuple(options)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._roots: bytes | None = None
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._failed = False  # the channel failed to connect since it was last READY

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from a grpcio thread: it must be thread-safe and quick) whenever the
        channel connects again after a failure to connect."""
        self._reconnect_callbacks.append(callback)

    def metadata(self) -> Metadata:
        """Call metadata: `clusterid`, and the bearer token read from its file now."""
        metadata: Metadata = (("clusterid", self._cluster_id), *self._headers)
        if self._token_file is not None:
            metadata += (("authorization", f"Bearer {self._read_token(self._token_file)}"),)
        return metadata

    def get(self) -> grpc.Channel:
        """The channel, rebuilt when the root certificate file's contents change."""
        try:
            roots = self._roots_source.read()
        except RootCertsError as e:
            raise ChannelError(f"{self._purpose} roots: {e}") from None
        with self._lock:
            if self._channel is None or roots != self._roots:
                self._close_locked()
                self._channel = grpc.secure_channel(
                    self.address.grpc_target,
                    grpc.ssl_channel_credentials(root_certificates=roots),
                    options=list(self._channel_options().items()),
                )
                self._failed = False
                self._channel.subscribe(self._watch, try_to_connect=True)
                self._roots = roots
            return self._channel

    def _channel_options(self) -> dict[str, str | int]:
        options: dict[str, str | int] = {
            "grpc.ssl_target_name_override": self._hostname,
            "grpc.default_authority": self._hostname,
        }
        options.update(_RECONNECT_OPTIONS)
        options.update(self._options)
        return options

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._channel is not None:
            self._channel.unsubscribe(self._watch)
            # grpcio's watcher thread notices the unsubscription only when its current wait
            # (0.2 s) ends; closing the channel before that makes it die with "Channel
            # deallocated!" on stderr.
            time.sleep(_WATCH_PERIOD)
            self._channel.close()
            self._channel = None

    def _watch(self, state: grpc.ChannelConnectivity) -> None:
        """Keeps grpcio polling the channel, and reports reconnections (see the module doc)."""
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._failed = True
        elif state is grpc.ChannelConnectivity.READY and self._failed:
            self._failed = False
            for callback in self._reconnect_callbacks:
                callback()

    def _read_token(self, path: Path) -> str:
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ChannelError(f"cannot read the {self._purpose} token file {path}: {e}") from None
        if not token:
            raise ChannelError(f"the {self._purpose} token file {path} is empty")
        return token
