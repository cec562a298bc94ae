"""Keys, CSRs, the CA and workload certificates, checked as X.509 structures."""

from __future__ import annotations

import ipaddress
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ztunnel_py.identity.pki import (
    CertificateAuthority,
    CertificateError,
    CsrError,
    WorkloadCertificate,
    generate_key,
    identities_from_cert,
    key_to_pem,
    load_certificate,
    make_csr,
    split_pem_bundle,
    uri_sans,
)
from ztunnel_py.model import Identity

ALICE = Identity("cluster.local", "demo", "alice")
BOB = Identity("cluster.local", "demo", "bob")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local")


def issue(ca: CertificateAuthority, identity: Identity, ttl: timedelta) -> WorkloadCertificate:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, identity), identity, ttl)
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)


def test_csr_is_p256_sha256_with_one_uri_san() -> None:
    csr = x509.load_pem_x509_csr(make_csr(generate_key(), ALICE))
    assert csr.is_signature_valid
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(ALICE))]


def test_signed_leaf_carries_identity_usages_and_chains_to_root(
    ca: CertificateAuthority,
) -> None:
    chain = ca.sign_csr(make_csr(generate_key(), ALICE), ALICE, timedelta(hours=1))
    assert len(chain) == 2
    assert chain[1] == ca.root_pem
    leaf, root = load_certificate(chain[0]), load_certificate(chain[1])
    leaf.verify_directly_issued_by(root)
    assert uri_sans(leaf) == [str(ALICE)]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=1)


def test_root_is_a_ten_year_p256_ca(ca: CertificateAuthority) -> None:
    root = ca.root_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert root.not_valid_after_utc - root.not_valid_before_utc >= timedelta(days=3649)


def test_garbage_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="not a PEM-encoded PKCS#10"):
        ca.sign_csr(b"hello", ALICE, timedelta(hours=1))


def test_csr_for_another_identity_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match=re.escape(f"requested identity is {BOB}")):
        ca.sign_csr(make_csr(generate_key(), ALICE), BOB, timedelta(hours=1))


def test_csr_without_san_is_refused(ca: CertificateAuthority) -> None:
    key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrError, match=r"URI SANs \[\]"):
        ca.sign_csr(csr, ALICE, timedelta(hours=1))


def test_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    der = x509.load_pem_x509_csr(make_csr(generate_key(), ALICE)).public_bytes(
        serialization.Encoding.DER
    )
    # The DER ends inside the signature's S integer: flipping its last byte keeps it parseable.
    tampered = der[:-1] + bytes([der[-1] ^ 0x01])
    pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrError, match="signature does not verify"):
        ca.sign_csr(pem, ALICE, timedelta(hours=1))


def test_leaf_never_outlives_the_root(ca: CertificateAuthority) -> None:
    chain = ca.sign_csr(make_csr(generate_key(), ALICE), ALICE, timedelta(days=365 * 20))
    assert load_certificate(chain[0]).not_valid_after_utc <= ca.root_cert.not_valid_after_utc


def test_save_and_load_keep_the_same_root_and_protect_the_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("example.org")
    ca.save(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "root-key.pem").stat().st_mode) == 0o600
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.root_pem == ca.root_pem
    chain = loaded.sign_csr(make_csr(generate_key(), ALICE), ALICE, timedelta(minutes=5))
    load_certificate(chain[0]).verify_directly_issued_by(ca.root_cert)


def test_serving_cert_has_dns_and_ip_sans(ca: CertificateAuthority) -> None:
    key_pem, chain = ca.issue_serving_cert(
        ["istiod.istio-system.svc"], [ipaddress.ip_address("10.1.2.3")], timedelta(days=1)
    )
    leaf = load_certificate(chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert key.public_key() == leaf.public_key()


def test_workload_certificate_from_ca_answer(ca: CertificateAuthority) -> None:
    cert = issue(ca, ALICE, timedelta(hours=2))
    assert cert.chain_pem[0].startswith("-----BEGIN CERTIFICATE-----")
    assert cert.roots_pem == [ca.root_pem]
    assert cert.not_after - cert.not_before == timedelta(hours=2)
    assert cert.refresh_at == cert.not_before + timedelta(hours=1)
    assert not cert.expired(cert.not_before)
    assert cert.expired(cert.not_after)
    assert identities_from_cert(cert.leaf_der) == [ALICE]
    assert cert.serial == load_certificate(cert.chain_pem[0]).serial_number
    key = serialization.load_pem_private_key(cert.key_pem.encode(), None)
    assert cert.key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert key.public_key() == load_certificate(cert.leaf_der).public_key()


def test_last_element_may_hold_several_roots(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("cluster.local")
    key = generate_key()
    leaf, root = ca.sign_csr(make_csr(key, ALICE), ALICE, timedelta(hours=1))
    cert = WorkloadCertificate.from_ca_response(
        ALICE, key_to_pem(key), [leaf, root + other.root_pem]
    )
    assert cert.roots_pem == [ca.root_pem, other.root_pem]
    assert cert.chain_pem == [leaf]


def test_answer_for_the_wrong_identity_is_refused(ca: CertificateAuthority) -> None:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, ALICE), ALICE, timedelta(hours=1))
    with pytest.raises(CertificateError, match=re.escape(f"not for {BOB}")):
        WorkloadCertificate.from_ca_response(BOB, key_to_pem(key), chain)


def test_answer_without_root_is_refused(ca: CertificateAuthority) -> None:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, ALICE), ALICE, timedelta(hours=1))
    with pytest.raises(CertificateError, match="expected a leaf and a root"):
        WorkloadCertificate.from_ca_response(ALICE, key_to_pem(key), chain[:1])
    with pytest.raises(CertificateError, match="no PEM"):
        WorkloadCertificate.from_ca_response(ALICE, key_to_pem(key), [chain[0], "junk"])


def test_non_spiffe_uri_sans_are_not_identities(ca: CertificateAuthority) -> None:
    key = generate_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("example.com"),
                    x509.UniformResourceIdentifier("https://example.com/"),
                    x509.UniformResourceIdentifier("spiffe://td/ns/a/sa/b/extra"),
                    x509.UniformResourceIdentifier("spiffe://td/ns/a/sa/b"),
                ]
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    assert len(uri_sans(cert)) == 3
    assert identities_from_cert(cert) == [Identity("td", "a", "b")]


def test_split_pem_bundle_ignores_text_between_certificates(ca: CertificateAuthority) -> None:
    text = "comment\n" + ca.root_pem + "\r\nmore\n" + ca.root_pem.replace("\n", "\r\n")
    assert split_pem_bundle(text) == [ca.root_pem, ca.root_pem]


def test_unparseable_certificate_is_a_clear_error() -> None:
    with pytest.raises(CertificateError, match="cannot parse certificate"):
        load_certificate(b"\x30\x03\x02\x01")
