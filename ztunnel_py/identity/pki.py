"""Keys, CSRs and X.509 certificates for SPIFFE workload identities (pure crypto, no I/O).

The only file access here is explicit: `CertificateAuthority.load` / `save`. Everything else turns
bytes into bytes with `cryptography`.

Certificates follow what Istio's CA issues and ztunnel expects (docs/istio-compat.md, "CA"):
- workload keys are ECDSA P-256, CSRs are PKCS#10 signed with SHA-256 carrying a single URI SAN;
- a workload leaf has an empty subject, a critical URI SAN, EKU serverAuth + clientAuth and key
  usage digitalSignature + keyEncipherment, so it serves both sides of an HBONE connection;
- a chain is written leaf first, root last, as PEM strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztunnel_py.model.address import IPAddress
from ztunnel_py.model.identity import Identity

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
ROOT_TTL = timedelta(days=3650)

_PEM_CERT_RE = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)

CertInput = bytes | str | x509.Certificate


class CsrError(ValueError):
    """A certificate signing request was malformed or asked for the wrong identity."""


class CertificateError(ValueError):
    """A certificate or chain could not be used (unparseable, wrong identity, no roots...)."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, as ztunnel makes for every CSR."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def make_csr(key: ec.EllipticCurvePrivateKey, identity: Identity) -> bytes:
    """A PEM PKCS#10 request for `identity`: empty subject, one critical URI SAN, SHA-256."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_certificate(cert: CertInput) -> x509.Certificate:
    """Parse one certificate given as DER bytes, PEM bytes or a PEM string."""
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode("ascii") if isinstance(cert, str) else cert
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise CertificateError(f"cannot parse certificate: {e}") from None


def split_pem_bundle(text: str) -> list[str]:
    """Split concatenated PEM certificates into one string per certificate (with a newline)."""
    return [m.group(0).replace("\r\n", "\n") + "\n" for m in _PEM_CERT_RE.finditer(text)]


def uri_sans(cert: CertInput) -> list[str]:
    """Every URI SAN of a certificate, in order; [] if it has no SAN extension."""
    parsed = load_certificate(cert)
    try:
        san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def identities_from_cert(cert: CertInput) -> list[Identity]:
    """The SPIFFE identities among a certificate's URI SANs; other or malformed URIs are skipped."""
    identities = []
    for uri in uri_sans(cert):
        try:
            identities.append(Identity.parse(uri))
        except ValueError:
            continue
    return identities


def _now() -> datetime:
    # X.509 times have one-second resolution; truncating keeps computed lifetimes exact.
    return datetime.now(UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class WorkloadCertificate:
    """A workload's key, its chain (leaf first, no root) and the trust anchors to verify peers."""

    identity: Identity
    key_pem: str
    chain_pem: list[str]
    roots_pem: list[str]
    not_before: datetime
    not_after: datetime
    serial: int

    @classmethod
    def from_ca_response(
        cls, identity: Identity, key_pem: str, cert_chain: Sequence[str]
    ) -> WorkloadCertificate:
        """Build from a CA answer: [leaf, intermediates..., roots] where the LAST element may hold
        several concatenated root PEMs (they all become trust anchors).

        Raises `CertificateError` if the answer has no leaf or no root, or if the leaf is not for
        `identity` (ztunnel refuses a certificate for any other identity than the one requested).
        """
        if len(cert_chain) < 2:
            raise CertificateError(
                f"CA answer has {len(cert_chain)} certificate(s); expected a leaf and a root"
            )
        chain = [c for element in cert_chain[:-1] for c in split_pem_bundle(element)]
        roots = split_pem_bundle(cert_chain[-1])
        if not chain or not roots:
            raise CertificateError("CA answer has no PEM leaf certificate or no PEM root")
        leaf = load_certificate(chain[0])
        found = identities_from_cert(leaf)
        if identity not in found:
            got = ", ".join(str(i) for i in found) or "no SPIFFE identity"
            raise CertificateError(f"CA issued a certificate for {got}, not for {identity}")
        return cls(
            identity=identity,
            key_pem=key_pem,
            chain_pem=chain,
            roots_pem=roots,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
        )

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.not_after

    @property
    def refresh_at(self) -> datetime:
        """Half-life: when ztunnel starts rotating the certificate."""
        return self.not_before + (self.not_after - self.not_before) / 2

    @cached_property
    def leaf_der(self) -> bytes:
        return load_certificate(self.chain_pem[0]).public_bytes(serialization.Encoding.DER)

    @property
    def trust_domain(self) -> str:
        return self.identity.trust_domain


class CertificateAuthority:
    """A self-signed root that signs workload CSRs and the control plane's serving certificate."""

    def __init__(self, root_cert: x509.Certificate, root_key: ec.EllipticCurvePrivateKey) -> None:
        if root_cert.public_key() != root_key.public_key():
            raise CertificateError("the CA key does not match the CA certificate")
        self._cert = root_cert
        self._key = root_key

    @classmethod
    def create(cls, trust_domain: str, org: str = "ztunnel-py") -> CertificateAuthority:
        """A new ECDSA P-256 root valid for 10 years, named after `org` and the trust domain."""
        key = generate_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{org} root CA for {trust_domain}"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + ROOT_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Read `root-cert.pem` and `root-key.pem` from `directory`."""
        cert = load_certificate((directory / ROOT_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / ROOT_KEY_FILE).read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{directory / ROOT_KEY_FILE} is not an ECDSA key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        """Write the root certificate and key (mode 0600) atomically into `directory`."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(directory / ROOT_KEY_FILE, key_to_pem(self._key).encode("ascii"), 0o600)
        _write_atomic(directory / ROOT_CERT_FILE, self.root_pem.encode("ascii"), 0o644)

    @property
    def root_pem(self) -> str:
        return _pem(self._cert)

    @property
    def root_cert(self) -> x509.Certificate:
        return self._cert

    def sign_csr(self, csr_pem: bytes, identity: Identity, ttl: timedelta) -> list[str]:
        """Sign a workload CSR for `identity`; returns the PEM chain [leaf, root].

        Raises `CsrError` if the CSR does not parse, its signature is wrong, its key is weak, or
        its URI SANs are not exactly `[str(identity)]`.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CsrError("CSR is not a PEM-encoded PKCS#10 certificate request") from None
        if not csr.is_signature_valid:
            raise CsrError("CSR signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise CsrError(f"CSR RSA key has {public_key.key_size} bits; at least 2048 needed")
        elif not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CsrError("CSR key must be ECDSA or RSA")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        except ValueError as e:
            raise CsrError(f"CSR extensions do not parse: {e}") from None
        if uris != [str(identity)]:
            raise CsrError(
                f"CSR asks for URI SANs {uris}, but the requested identity is {identity}"
            )
        leaf = self._issue(
            public_key,
            [x509.UniformResourceIdentifier(str(identity))],
            ttl,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        return [_pem(leaf), self.root_pem]

    def issue_serving_cert(
        self, dns_names: Iterable[str], ips: Iterable[IPAddress], ttl: timedelta
    ) -> tuple[str, list[str]]:
        """A TLS server certificate for the control plane: (PKCS#8 key PEM, [leaf, root] PEMs)."""
        key = generate_key()
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ip) for ip in ips]
        if not names:
            raise ValueError("a serving certificate needs at least one DNS name or IP")
        leaf = self._issue(key.public_key(), names, ttl, [ExtendedKeyUsageOID.SERVER_AUTH])
        return key_to_pem(key), [_pem(leaf), self.root_pem]

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        sans: list[x509.GeneralName],
        ttl: timedelta,
        usages: list[x509.ObjectIdentifier],
    ) -> x509.Certificate:
        if ttl <= timedelta(0):
            raise ValueError(f"certificate lifetime must be positive, got {ttl}")
        now = _now()
        # Never outlive the root: a chain is only valid while every element is.
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            # With an empty subject the SAN is the only name, so RFC 5280 wants it critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)  # O_CREAT's mode does not apply to a leftover file
        f.write(data)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)
