"""The CA service over real gRPC/TLS on loopback: node authorization and its refusals."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import trio
from cryptography import x509
from prometheus_client import generate_latest

from tests.integration.ca_support import RunningCa, start_ca, write_workloads
from ztunnel_py.config import parse_headers
from ztunnel_py.identity.caclient import CREATE_CERTIFICATE, CaError, GrpcCaClient
from ztunnel_py.identity.pki import (
    generate_key,
    identities_from_cert,
    load_certificate,
    make_csr,
)
from ztunnel_py.model import Identity
from ztunnel_py.proto import citadel_pb2
from ztunnel_py.transport.roots import RootCerts

ALICE = Identity("cluster.local", "demo", "alice")  # on node-1
BOB = Identity("cluster.local", "demo", "bob")  # on node-2


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[RunningCa]:
    config = tmp_path / "local.yaml"
    write_workloads(config, {"node-1": [("demo", "alice")], "node-2": [("demo", "bob")]})
    running = start_ca(tmp_path / "data", config, max_ttl=timedelta(hours=2))
    try:
        yield running
    finally:
        running.stop()


async def sign_ok(ca: RunningCa, token: Path, identity: Identity) -> list[str]:
    chain = await ca.client(token).sign(
        make_csr(generate_key(), identity), identity, timedelta(hours=1)
    )
    assert identities_from_cert(chain[0]) == [identity]
    return chain


async def test_signs_an_identity_on_the_callers_node(ca: RunningCa) -> None:
    chain = await sign_ok(ca, ca.token_file("node-1"), ALICE)
    assert len(chain) == 2
    assert chain[-1] == ca.root_path.read_text()
    leaf = load_certificate(chain[0])
    leaf.verify_directly_issued_by(load_certificate(chain[-1]))
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=1)


async def test_lifetime_is_capped_at_the_maximum(ca: RunningCa) -> None:
    chain = await ca.client(ca.token_file("node-1")).sign(
        make_csr(generate_key(), ALICE), ALICE, timedelta(days=30)
    )
    leaf = load_certificate(chain[0])
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=2)


async def test_identity_of_another_node_is_permission_denied(
    ca: RunningCa, caplog: pytest.LogCaptureFixture
) -> None:
    token = ca.token_file("node-1")
    with pytest.raises(CaError) as info:
        await ca.client(token).sign(make_csr(generate_key(), BOB), BOB, timedelta(hours=1))
    assert info.value.status == "PERMISSION_DENIED"
    assert f"no workload with identity {BOB} is scheduled on node node-1" in info.value.message
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("from node node-1" in m and "PERMISSION_DENIED" in m for m in refusals)
    await sign_ok(ca, token, ALICE)


@pytest.mark.parametrize("case", ["missing", "unknown", "expired"])
async def test_bad_credentials_are_unauthenticated(
    ca: RunningCa, tmp_path: Path, case: str
) -> None:
    token: Path | None
    if case == "missing":
        token = None
    elif case == "unknown":
        token = tmp_path / "made-up"
        token.write_text("ztpy-node-made-up\n")
    else:
        token = ca.token_file("node-1", ttl=timedelta(microseconds=1))
    with pytest.raises(CaError) as info:
        await ca.client(token).sign(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))
    assert info.value.status == "UNAUTHENTICATED"
    await sign_ok(ca, ca.token_file("node-1"), ALICE)


async def test_garbage_csr_is_invalid_argument(ca: RunningCa) -> None:
    token = ca.token_file("node-1")
    with pytest.raises(CaError) as info:
        await ca.client(token).sign(b"-----BEGIN NONSENSE-----", ALICE, timedelta(hours=1))
    assert info.value.status == "INVALID_ARGUMENT"
    assert "PKCS#10" in info.value.message
    await sign_ok(ca, token, ALICE)


async def test_csr_san_differing_from_requested_identity_is_invalid_argument(
    ca: RunningCa,
) -> None:
    token = ca.token_file("node-1")
    with pytest.raises(CaError) as info:
        await ca.client(token).sign(make_csr(generate_key(), BOB), ALICE, timedelta(hours=1))
    assert info.value.status == "INVALID_ARGUMENT"
    assert f"requested identity is {ALICE}" in info.value.message
    await sign_ok(ca, token, ALICE)


async def test_identity_outside_the_trust_domain_is_invalid_argument(ca: RunningCa) -> None:
    token = ca.token_file("node-1")
    foreign = Identity("evil.example", "demo", "alice")
    with pytest.raises(CaError) as info:
        await ca.client(token).sign(make_csr(generate_key(), foreign), foreign, timedelta(hours=1))
    assert info.value.status == "INVALID_ARGUMENT"
    assert "trust domain" in info.value.message


async def test_istiods_citadel_metrics_count_requests_issuances_and_refusals(
    ca: RunningCa,
) -> None:
    token = ca.token_file("node-1")
    await sign_ok(ca, token, ALICE)
    refusals = [
        (None, make_csr(generate_key(), ALICE), ALICE),  # no credential
        (token, make_csr(generate_key(), BOB), BOB),  # BOB is not on node-1
        (token, make_csr(generate_key(), BOB), ALICE),  # the CSR names someone else
    ]
    foreign = Identity("evil.example", "demo", "alice")
    refusals.append((token, make_csr(generate_key(), foreign), foreign))
    for credential, csr, identity in refusals:
        with pytest.raises(CaError):
            await ca.client(credential).sign(csr, identity, timedelta(hours=1))
    text = generate_latest(ca.metrics).decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("citadel_server_")
    }
    root = load_certificate(ca.root_path.read_text())
    expiry = root.not_valid_after_utc.timestamp()
    left = samples.pop("citadel_server_root_cert_expiry_seconds")
    assert expiry - time.time() - 60 < left <= expiry - time.time() + 1
    # istiod's names: counters without `_total`
    assert samples == {
        "citadel_server_csr_count": 5.0,
        "citadel_server_success_cert_issuance_count": 1.0,
        "citadel_server_authentication_failure_count": 2.0,
        'citadel_server_csr_sign_err_count{error="CSR_ERROR"}': 1.0,
        "citadel_server_csr_parsing_err_count": 1.0,
        "citadel_server_root_cert_expiry_timestamp": expiry,
    }


def raw_call(ca: RunningCa, request: citadel_pb2.IstioCertificateRequest, token: Path) -> str:
    """Send a hand-built request; returns the status name."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca.root_path.read_bytes())
    options = [("grpc.ssl_target_name_override", "istiod.istio-system.svc")]
    with grpc.secure_channel(ca.address.grpc_target, creds, options=options) as channel:
        call = channel.unary_unary(
            CREATE_CERTIFICATE,
            request_serializer=citadel_pb2.IstioCertificateRequest.SerializeToString,
            response_deserializer=citadel_pb2.IstioCertificateResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {token.read_text().strip()}"),)
        try:
            call(request, metadata=metadata, timeout=5)
        except grpc.RpcError as e:
            assert isinstance(e, grpc.Call)
            return str(e.code().name)
        return "OK"


def test_without_impersonation_the_csr_san_is_the_identity(ca: RunningCa) -> None:
    token = ca.token_file("node-1")
    csr = make_csr(generate_key(), ALICE).decode()
    assert raw_call(ca, citadel_pb2.IstioCertificateRequest(csr=csr), token) == "OK"
    bob_csr = make_csr(generate_key(), BOB).decode()
    request = citadel_pb2.IstioCertificateRequest(csr=bob_csr)
    assert raw_call(ca, request, token) == "PERMISSION_DENIED"


def test_malformed_impersonation_metadata_is_invalid_argument(ca: RunningCa) -> None:
    token = ca.token_file("node-1")
    request = citadel_pb2.IstioCertificateRequest(csr=make_csr(generate_key(), ALICE).decode())
    request.metadata.fields["ImpersonatedIdentity"].number_value = 3
    assert raw_call(ca, request, token) == "INVALID_ARGUMENT"
    request.metadata.fields["ImpersonatedIdentity"].string_value = "spiffe://cluster.local/x"
    assert raw_call(ca, request, token) == "INVALID_ARGUMENT"
    request.metadata.fields["ImpersonatedIdentity"].string_value = str(ALICE)
    assert raw_call(ca, request, token) == "OK"


async def test_workloads_file_changes_take_effect(ca: RunningCa, tmp_path: Path) -> None:
    token = ca.token_file("node-1")
    with pytest.raises(CaError, match="PERMISSION_DENIED"):
        await ca.client(token).sign(make_csr(generate_key(), BOB), BOB, timedelta(hours=1))
    write_workloads(ca.registry.path, {"node-1": [("demo", "alice"), ("demo", "bob")]})
    ca.registry.reload_if_changed()
    await sign_ok(ca, token, BOB)


async def test_root_persists_across_restart(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    write_workloads(config, {"node-1": [("demo", "alice")]})
    first = start_ca(tmp_path / "data", config)
    try:
        token = first.token_file("node-1")
        before = await sign_ok(first, token, ALICE)
    finally:
        first.stop()
    second = start_ca(tmp_path / "data", config, port=first.port)
    try:
        after = await sign_ok(second, token, ALICE)
    finally:
        second.stop()
    assert before[-1] == after[-1]
    load_certificate(after[0]).verify_directly_issued_by(load_certificate(before[-1]))


async def test_serving_certificate_names_istiod_and_chains_to_the_root(ca: RunningCa) -> None:
    ctx = ssl.create_default_context(cadata=ca.root_path.read_text())
    ctx.set_alpn_protocols(["h2"])
    tls = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", ca.port),
        ctx,
        server_hostname="istiod.istio-system.svc",
    )
    await tls.do_handshake()  # verifies the chain and the DNS name
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    san = load_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
    await tls.aclose()


if TYPE_CHECKING:
    Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # generic only in grpc's type stubs
    Interceptor = grpc.ServerInterceptor


class MetadataRecorder(Interceptor):
    """Keeps the metadata of every call the CA server receives."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append(dict(details.invocation_metadata))
        return continuation(details)


async def test_inline_pem_roots_and_extra_headers(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    write_workloads(config, {"node-1": [("demo", "alice")]})
    recorder = MetadataRecorder()
    running = start_ca(tmp_path / "data", config, interceptors=[recorder])
    try:
        # CA_ROOT_CA given as the PEM text itself, and CA_HEADER_X_TEAM=payments.
        roots = RootCerts.parse(running.root_path.read_text())
        headers = parse_headers(["X_TEAM=payments"], "--ca-header")
        client = GrpcCaClient(running.address, roots, running.token_file("node-1"), headers=headers)
        try:
            chain = await client.sign(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))
        finally:
            client.close()
        assert identities_from_cert(chain[0]) == [ALICE]
        (call,) = recorder.calls
        assert call["x_team"] == "payments"
        assert call["clusterid"] == "Kubernetes"
    finally:
        running.stop()


async def test_system_roots_do_not_trust_the_mesh_ca(ca: RunningCa) -> None:
    # CA_ROOT_CA=SYSTEM reads the machine's trust store, which knows nothing of our CA.
    client = GrpcCaClient(
        ca.address,
        RootCerts.parse("SYSTEM"),
        ca.token_file("node-1"),
        timeout=timedelta(seconds=3),
    )
    try:
        with pytest.raises(CaError, match="UNAVAILABLE"):
            await client.sign(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))
    finally:
        client.close()
