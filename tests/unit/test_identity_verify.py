"""SPIFFE peer checks (docs/istio-compat.md, "Identities and peer verification"), without
sockets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ztunnel_py.identity.pki import (
    CertificateAuthority,
    WorkloadCertificate,
    generate_key,
    key_to_pem,
    make_csr,
)
from ztunnel_py.identity.tls import (
    PeerIdentityError,
    verify_client_identity,
    verify_server_identity,
)
from ztunnel_py.model import Identity

SERVER = Identity("cluster.local", "demo", "server")
OTHER = Identity("cluster.local", "demo", "other")
FOREIGN = Identity("other.domain", "demo", "client")


def leaf_der(identity: Identity) -> bytes:
    ca = CertificateAuthority.create(identity.trust_domain)
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, identity), identity, timedelta(hours=1))
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain).leaf_der


def test_server_accepted_when_any_san_matches_any_expected() -> None:
    assert verify_server_identity(leaf_der(SERVER), [OTHER, SERVER]) == SERVER


def test_server_refused_when_no_expected_identity_matches() -> None:
    with pytest.raises(PeerIdentityError, match="does not match any expected identity"):
        verify_server_identity(leaf_der(SERVER), [OTHER])


def test_server_refused_with_empty_expectations_or_no_certificate() -> None:
    with pytest.raises(PeerIdentityError):
        verify_server_identity(leaf_der(SERVER), [])
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_server_identity(None, [SERVER])


def test_client_accepted_in_our_trust_domain() -> None:
    assert verify_client_identity(leaf_der(OTHER), "cluster.local") == OTHER


def test_client_refused_from_another_trust_domain() -> None:
    with pytest.raises(PeerIdentityError, match="peer did not present the expected trustdomain"):
        verify_client_identity(leaf_der(FOREIGN), "cluster.local")
    with pytest.raises(PeerIdentityError, match="no certificate"):
        verify_client_identity(None, "cluster.local")
