"""Clients of the CA service `istio.v1.auth.IstioCertificateService/CreateCertificate`.

`GrpcCaClient` talks to a real CA (ours or istiod) over gRPC/TLS as ztunnel does: the CSR goes
with `validity_duration` and metadata `ImpersonatedIdentity`, the node credential with
`authorization: Bearer <token>` (the token file is re-read on every request, since projected
Kubernetes tokens rotate) and `clusterid`. The channel trusts the CA roots from a file and is
rebuilt when that file changes (`ControlPlaneChannel`, shared with the xDS client). grpcio
blocks, so each call runs in a worker thread.

`LocalCaClient` signs in process with a `CertificateAuthority` (ztunnel's FAKE_CA).

Both raise `CaError` for every failure, carrying the gRPC status name when there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import grpc
import trio
from google.protobuf import struct_pb2

from ztunnel_py.identity.pki import CertificateAuthority, CsrError
from ztunnel_py.model.address import SocketAddr
from ztunnel_py.model.identity import Identity
from ztunnel_py.model.workload import DEFAULT_CLUSTER_ID
from ztunnel_py.proto import citadel_pb2
from ztunnel_py.transport.grpc_channel import (
    DEFAULT_CONTROL_PLANE_HOSTNAME,
    ChannelError,
    ControlPlaneChannel,
    Metadata,
)
from ztunnel_py.transport.roots import RootCerts

CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
DEFAULT_CA_HOSTNAME = DEFAULT_CONTROL_PLANE_HOSTNAME


class CaError(Exception):
    """The CA did not sign: `status` is the gRPC status name (e.g. PERMISSION_DENIED) or ''."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class CertificateSigner(Protocol):
    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        """Return the PEM chain for the CSR: leaf first, root(s) last. Raise `CaError`."""
        ...


class GrpcCaClient:
    def __init__(
        self,
        address: SocketAddr,
        roots: RootCerts | Path,
        token_file: Path | None,
        *,
        hostname: str = DEFAULT_CA_HOSTNAME,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        timeout: timedelta = timedelta(seconds=10),
        headers: Metadata = (),
    ) -> None:
        self._address = address
        self._channel = ControlPlaneChannel(
            address,
            roots,
            token_file,
            hostname=hostname,
            cluster_id=cluster_id,
            purpose="CA",
            headers=headers,
        )
        self._timeout = timeout.total_seconds()

    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        # abandon_on_cancel: a cancelled caller returns at once; the thread finishes by its
        # own deadline and its result is dropped.
        return await trio.to_thread.run_sync(
            self._sign_blocking, csr_pem, identity, ttl, abandon_on_cancel=True
        )

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call `callback` (thread-safe, from a grpcio thread) when the channel to the CA
        connects again after failing to."""
        self._channel.on_reconnect(callback)

    def close(self) -> None:
        self._channel.close()

    def _sign_blocking(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        try:
            metadata = self._channel.metadata()
            channel = self._channel.get()
        except ChannelError as e:
            raise CaError("", str(e)) from None
        request = citadel_pb2.IstioCertificateRequest(
            csr=csr_pem.decode("ascii"),
            validity_duration=max(1, int(ttl.total_seconds())),
            metadata=struct_pb2.Struct(
                fields={"ImpersonatedIdentity": struct_pb2.Value(string_value=str(identity))}
            ),
        )
        call = channel.unary_unary(
            CREATE_CERTIFICATE,
            request_serializer=citadel_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=citadel_pb2.IstioCertificateResponse.FromString,
        )
        try:
            response: citadel_pb2.IstioCertificateResponse = call(
                request, metadata=metadata, timeout=self._timeout
            )
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            raise CaError(code.name if code else "", details or "no details") from None
        if not response.cert_chain:
            raise CaError("", f"CA at {self._address} answered with an empty certificate chain")
        return list(response.cert_chain)


class LocalCaClient:
    """Signs in process with `ca`, for any identity (no node authorization): FAKE_CA mode."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self._ca = ca

    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        await trio.lowlevel.checkpoint()
        try:
            return self._ca.sign_csr(csr_pem, identity, ttl)
        except CsrError as e:
            raise CaError("INVALID_ARGUMENT", str(e)) from None
