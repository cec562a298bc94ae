"""Clients of the CA service `istio.v1.auth.IstioCertificateService/CreateCertificate`.

`GrpcCaClient` talks to a real CA (ours or istiod) over gRPC/TLS as ztunnel does: the CSR goes
with `validity_duration` and metadata `ImpersonatedIdentity`, the node credential with
`authorization: Bearer <token>` (the token file is re-read on every request, since projected
Kubernetes tokens rotate) and `clusterid`. The channel trusts the CA roots from a file and is
rebuilt when that file changes. grpcio blocks, so each call runs in a worker thread.

`LocalCaClient` signs in process with a `CertificateAuthority` (ztunnel's FAKE_CA).

Both raise `CaError` for every failure, carrying the gRPC status name when there is one.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import grpc
import trio
from google.protobuf import struct_pb2

from ztunnel_py.identity.pki import CertificateAuthority, CsrError
from ztunnel_py.model.identity import Identity
from ztunnel_py.proto import citadel_pb2

CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
DEFAULT_CA_HOSTNAME = "istiod.istio-system.svc"
DEFAULT_CLUSTER_ID = "Kubernetes"


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
        address: str,
        root_cert: Path,
        token_file: Path | None,
        *,
        hostname: str = DEFAULT_CA_HOSTNAME,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self._address = address
        self._root_cert = root_cert
        self._token_file = token_file
        self._hostname = hostname
        self._cluster_id = cluster_id
        self._timeout = timeout.total_seconds()
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._roots: bytes | None = None

    async def sign(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        # abandon_on_cancel: a cancelled caller returns at once; the thread finishes by its
        # own deadline and its result is dropped.
        return await trio.to_thread.run_sync(
            self._sign_blocking, csr_pem, identity, ttl, abandon_on_cancel=True
        )

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _sign_blocking(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        metadata: tuple[tuple[str, str | bytes], ...] = (("clusterid", self._cluster_id),)
        if self._token_file is not None:
            token = _read_token(self._token_file)
            metadata += (("authorization", f"Bearer {token}"),)
        request = citadel_pb2.IstioCertificateRequest(
            csr=csr_pem.decode("ascii"),
            validity_duration=max(1, int(ttl.total_seconds())),
            metadata=struct_pb2.Struct(
                fields={"ImpersonatedIdentity": struct_pb2.Value(string_value=str(identity))}
            ),
        )
        call = self._channel_for_call().unary_unary(
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

    def _channel_for_call(self) -> grpc.Channel:
        """The channel, rebuilt when the root certificate file's contents change."""
        try:
            roots = self._root_cert.read_bytes()
        except OSError as e:
            raise CaError(
                "", f"cannot read the CA root certificate {self._root_cert}: {e}"
            ) from None
        with self._lock:
            if self._channel is None or roots != self._roots:
                if self._channel is not None:
                    self._channel.close()
                self._channel = grpc.secure_channel(
                    self._address,
                    grpc.ssl_channel_credentials(root_certificates=roots),
                    options=[
                        ("grpc.ssl_target_name_override", self._hostname),
                        ("grpc.default_authority", self._hostname),
                        # The certificate manager owns retry timing; grpc's own reconnect backoff
                        # (1 s growing to 120 s) would fail our retries without even connecting.
                        ("grpc.initial_reconnect_backoff_ms", 100),
                        ("grpc.min_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 1000),
                    ],
                )
                self._roots = roots
            return self._channel


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise CaError("", f"cannot read the CA token file {path}: {e}") from None
    if not token:
        raise CaError("", f"the CA token file {path} is empty")
    return token


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
