"""The CA service: `istio.v1.auth.IstioCertificateService/CreateCertificate` (docs/istio-compat.md,
"CA").

A request is signed only if all of these hold, checked in this order:
1. the caller authenticates (UNAUTHENTICATED otherwise): a node credential, or a workload's own
   (a service-account token of a pod that is not a node agent, `kubeauth.py`);
2. the requested identity (metadata `ImpersonatedIdentity`, else the CSR's URI SAN) is a SPIFFE
   identity in our trust domain and the CSR parses (INVALID_ARGUMENT otherwise);
3. a node credential: a workload with that identity is scheduled on the caller's node; a
   workload's credential: it is the workload's own identity (PERMISSION_DENIED otherwise);
4. the CSR's signature verifies and its only URI SAN is that identity (INVALID_ARGUMENT).
The certificate lives min(requested, maximum) seconds; the answer is [leaf, root].

Protobuf types stop here: the checks themselves (`CertificateService.create`) take plain values
and raise `CaRequestError`, which the gRPC servicer turns into a status with the same message.
Every refusal is logged with the caller (node name when known, else the peer address) and
counted in istiod's `citadel_server_*` metrics (`metrics.CaMetrics`): a refused caller or
identity as an authentication failure, a CSR that does not parse as a parsing error, a CSR that
cannot be signed as a signing error by reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import grpc
from cryptography import x509
from prometheus_client import CollectorRegistry

from ztunnel_py.controlplane.metrics import CaMetrics
from ztunnel_py.controlplane.nodeauth import AuthenticationError, NodeAuthenticator
from ztunnel_py.controlplane.registry import WorkloadRegistry
from ztunnel_py.identity.pki import CertificateAuthority, CsrError
from ztunnel_py.model.identity import Identity
from ztunnel_py.proto import citadel_pb2

log = logging.getLogger("ztunnel_py.controlplane.ca")

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
SERVICE_NAME = "istio.v1.auth.IstioCertificateService"


# istiod's `error` label of citadel_server_csr_sign_err_count for a CSR it cannot sign
CSR_ERROR = "CSR_ERROR"


class CaRequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, sign_error: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # set when the request was valid but could not be signed (istiod's error type)
        self.sign_error = sign_error


@dataclass(frozen=True, slots=True)
class SignRequest:
    csr_pem: bytes
    validity_seconds: int
    impersonated_identity: str | None
    metadata: Mapping[str, str]
    peer: str


class CertificateService:
    """Node-authorized signing of workload certificates (transport-independent)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: NodeAuthenticator,
        registry: WorkloadRegistry,
        trust_domain: str,
        max_ttl: timedelta,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._ca = ca
        self._metrics = CaMetrics(
            metrics_registry or CollectorRegistry(),
            lambda: ca.root_cert.not_valid_after_utc.timestamp(),
        )
        self._authenticator = authenticator
        self._registry = registry
        self._trust_domain = trust_domain
        self._max_ttl = max_ttl

    def create(self, req: SignRequest) -> list[str]:
        self._metrics.csrs.inc()
        try:
            chain = self._create(req)
        except CaRequestError as e:
            if e.sign_error is not None:
                self._metrics.sign_errors.inc(e.sign_error)
            elif e.code == grpc.StatusCode.INVALID_ARGUMENT:
                self._metrics.parsing_errors.inc()
            else:
                self._metrics.authentication_failures.inc()
            raise
        self._metrics.issued.inc()
        return chain

    def _create(self, req: SignRequest) -> list[str]:
        try:
            authenticated = self._authenticator.authenticate(req.metadata)
        except AuthenticationError as e:
            raise self._refuse(
                grpc.StatusCode.UNAUTHENTICATED, f"peer {req.peer}", str(e)
            ) from None
        node = authenticated.node
        own = authenticated.identity
        caller = f"node {node} ({req.peer})" if own is None else f"{own} on node {node}"
        identity = self._requested_identity(req, caller)
        if own is not None and identity != own:
            raise self._refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                caller,
                f"a workload's credential may only ask for its own identity {own}, not {identity}",
            )
        if own is None and identity not in self._registry.identities_on_node(node):
            raise self._refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                caller,
                f"no workload with identity {identity} is scheduled on node {node}",
            )
        ttl = self._max_ttl
        if req.validity_seconds > 0:
            ttl = min(ttl, timedelta(seconds=req.validity_seconds))
        try:
            chain = self._ca.sign_csr(req.csr_pem, identity, ttl)
        except CsrError as e:
            refused = self._refuse(grpc.StatusCode.INVALID_ARGUMENT, caller, str(e))
            refused.sign_error = CSR_ERROR
            raise refused from None
        log.info("signed %s for %s, valid %s", identity, caller, ttl)
        return chain

    def _requested_identity(self, req: SignRequest, caller: str) -> Identity:
        uri = req.impersonated_identity
        if uri is None:
            uri = self._csr_uri(req.csr_pem, caller)
        try:
            identity = Identity.parse(uri)
        except ValueError as e:
            raise self._refuse(grpc.StatusCode.INVALID_ARGUMENT, caller, str(e)) from None
        if identity.trust_domain != self._trust_domain:
            raise self._refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                caller,
                f"identity {identity} is not in this CA's trust domain {self._trust_domain}",
            )
        return identity

    def _csr_uri(self, csr_pem: bytes, caller: str) -> str:
        """The CSR's single URI SAN, for callers that do not impersonate."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        except ValueError:
            raise self._refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                caller,
                "CSR is not a PEM-encoded PKCS#10 certificate request",
            ) from None
        except x509.ExtensionNotFound:
            uris = []
        if len(uris) != 1:
            raise self._refuse(
                grpc.StatusCode.INVALID_ARGUMENT,
                caller,
                f"no {IMPERSONATED_IDENTITY} metadata and the CSR has {len(uris)} URI SANs "
                "(exactly one needed)",
            )
        return uris[0]

    @staticmethod
    def _refuse(code: grpc.StatusCode, caller: str, message: str) -> CaRequestError:
        log.warning("refused CreateCertificate from %s: %s: %s", caller, code.name, message)
        return CaRequestError(code, message)


class IstioCertificateServicer:
    """gRPC adapter: protobuf and metadata in, `CertificateService` decides."""

    def __init__(self, service: CertificateService) -> None:
        self._service = service

    def CreateCertificate(
        self,
        request: citadel_pb2.IstioCertificateRequest,
        context: grpc.ServicerContext,
    ) -> citadel_pb2.IstioCertificateResponse:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        impersonated: str | None = None
        if request.HasField("metadata") and IMPERSONATED_IDENTITY in request.metadata.fields:
            value = request.metadata.fields[IMPERSONATED_IDENTITY]
            if value.WhichOneof("kind") != "string_value":
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{IMPERSONATED_IDENTITY} must be a string"
                )
            impersonated = value.string_value
        req = SignRequest(
            csr_pem=request.csr.encode("utf-8"),
            validity_seconds=request.validity_duration,
            impersonated_identity=impersonated,
            metadata=metadata,
            peer=context.peer(),
        )
        try:
            chain = self._service.create(req)
        except CaRequestError as e:
            context.abort(e.code, e.message)
        return citadel_pb2.IstioCertificateResponse(cert_chain=chain)


def add_to_server(service: CertificateService, server: grpc.Server) -> None:
    # Registered by hand rather than through the generated `*_pb2_grpc` helper, which is untyped.
    servicer = IstioCertificateServicer(service)
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                servicer.CreateCertificate,
                request_deserializer=citadel_pb2.IstioCertificateRequest.FromString,
                response_serializer=citadel_pb2.IstioCertificateResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
