"""HBONE TLS contexts: real handshakes over a socketpair between two workload certificates."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
import trio

from ztunnel_py.identity import tls
from ztunnel_py.identity.pki import (
    CertificateAuthority,
    WorkloadCertificate,
    generate_key,
    key_to_pem,
    make_csr,
)
from ztunnel_py.model import Identity
from ztunnel_py.transport.hbone.connection import HBONE_CIPHER_SUITES

CLIENT = Identity("cluster.local", "demo", "client")
SERVER = Identity("cluster.local", "demo", "server")

SSLStream = trio.SSLStream[trio.SocketStream]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cluster.local")


def issue(ca: CertificateAuthority, identity: Identity) -> WorkloadCertificate:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, identity), identity, timedelta(hours=1))
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)


@dataclass
class Result:
    client: SSLStream
    server: SSLStream
    client_error: BaseException | None = None
    server_error: BaseException | None = None


async def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> Result:
    a, b = trio.socket.socketpair()
    result = Result(
        trio.SSLStream(trio.SocketStream(a), client_ctx, server_hostname=None),
        trio.SSLStream(trio.SocketStream(b), server_ctx, server_side=True),
    )

    async def client() -> None:
        try:
            await result.client.do_handshake()
            # TLS 1.3: a refused client certificate only shows on the client's first read.
            await result.client.send_all(b"ping")
            assert await result.client.receive_some(4) == b"pong"
        except (trio.BrokenResourceError, ssl.SSLError, AssertionError) as e:
            result.client_error = e
        finally:
            await trio.aclose_forcefully(result.client)

    async def server() -> None:
        try:
            await result.server.do_handshake()
            assert await result.server.receive_some(4) == b"ping"
            await result.server.send_all(b"pong")
        except (trio.BrokenResourceError, ssl.SSLError, AssertionError) as e:
            result.server_error = e
        finally:
            await trio.aclose_forcefully(result.server)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            nursery.start_soon(server)
    return result


async def test_mutual_handshake_and_identity_checks(ca: CertificateAuthority) -> None:
    sni: list[str | None] = []
    server_ctx = tls.build_server_context(issue(ca, SERVER))
    server_ctx.sni_callback = lambda _obj, name, _ctx: sni.append(name)
    checked: dict[str, Identity] = {}

    a, b = trio.socket.socketpair()
    client = trio.SSLStream(
        trio.SocketStream(a), tls.client_context(issue(ca, CLIENT)), server_hostname=None
    )
    server = trio.SSLStream(trio.SocketStream(b), server_ctx, server_side=True)

    async def client_side() -> None:
        await client.do_handshake()
        checked["server"] = tls.check_server_peer(client, [Identity("x", "y", "z"), SERVER])
        await client.send_all(b"hello")

    async def server_side() -> None:
        await server.do_handshake()
        checked["client"] = tls.check_client_peer(server, "cluster.local")
        assert await server.receive_some(5) == b"hello"

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            nursery.start_soon(server_side)
    assert checked == {"server": SERVER, "client": CLIENT}
    assert client.version() == "TLSv1.3"
    cipher = client.cipher()
    assert cipher is not None and cipher[0] == HBONE_CIPHER_SUITES[0]
    assert client.selected_alpn_protocol() == "h2"
    assert sni == [None]  # no SNI sent
    session = client.session
    assert session is None or not session.has_ticket  # no resumption material
    await client.aclose()
    await server.aclose()


async def test_wrong_expected_identity_is_refused(ca: CertificateAuthority) -> None:
    a, b = trio.socket.socketpair()
    client = trio.SSLStream(
        trio.SocketStream(a), tls.client_context(issue(ca, CLIENT)), server_hostname=None
    )
    server = trio.SSLStream(
        trio.SocketStream(b), tls.server_context(issue(ca, SERVER)), server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    with pytest.raises(tls.PeerIdentityError, match="does not match any expected identity"):
        tls.check_server_peer(client, [Identity("cluster.local", "demo", "someone-else")])
    await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(server)


async def test_client_from_another_trust_domain_is_refused_after_handshake() -> None:
    # Same root, but the client's identity lives in a foreign trust domain.
    ca = CertificateAuthority.create("cluster.local")
    foreign = Identity("other.domain", "demo", "client")
    a, b = trio.socket.socketpair()
    client = trio.SSLStream(
        trio.SocketStream(a), tls.client_context(issue(ca, foreign)), server_hostname=None
    )
    server = trio.SSLStream(
        trio.SocketStream(b), tls.server_context(issue(ca, SERVER)), server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    with pytest.raises(tls.PeerIdentityError, match="expected trustdomain"):
        tls.check_client_peer(server, "cluster.local")
    await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(server)


async def test_certificate_from_another_ca_fails_the_handshake(ca: CertificateAuthority) -> None:
    # The client trusts our root (so it accepts the server) but its own certificate comes from
    # a stranger CA: the server's verification must fail.
    stranger = issue(CertificateAuthority.create("cluster.local"), CLIENT)
    stranger = replace(stranger, roots_pem=[ca.root_pem])
    result = await handshake(tls.client_context(stranger), tls.server_context(issue(ca, SERVER)))
    assert isinstance(result.server_error, trio.BrokenResourceError)
    assert "certificate verify failed" in str(result.server_error.__cause__)

    result = await handshake(
        tls.client_context(issue(ca, CLIENT)),
        tls.server_context(issue(CertificateAuthority.create("cluster.local"), SERVER)),
    )
    assert isinstance(result.client_error, trio.BrokenResourceError)
    assert "certificate verify failed" in str(result.client_error.__cause__)


async def test_client_without_certificate_is_refused(ca: CertificateAuthority) -> None:
    server_cert = issue(ca, SERVER)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.set_alpn_protocols(["h2"])
    anonymous.load_verify_locations(cadata=server_cert.roots_pem[0])
    result = await handshake(anonymous, tls.server_context(server_cert))
    assert isinstance(result.server_error, trio.BrokenResourceError)
    assert "peer did not return a certificate" in str(result.server_error.__cause__)
    assert result.client_error is not None


async def test_client_without_h2_alpn_is_refused_after_handshake(
    ca: CertificateAuthority,
) -> None:
    client_ctx = tls.build_client_context(issue(ca, CLIENT))
    client_ctx.set_alpn_protocols(["http/1.1"])
    a, b = trio.socket.socketpair()
    client = trio.SSLStream(trio.SocketStream(a), client_ctx, server_hostname=None)
    server = trio.SSLStream(
        trio.SocketStream(b), tls.server_context(issue(ca, SERVER)), server_side=True
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    with pytest.raises(tls.PeerIdentityError, match="ALPN"):
        tls.check_client_peer(server, "cluster.local")
    await trio.aclose_forcefully(client)
    await trio.aclose_forcefully(server)


def test_contexts_allow_only_tls13(ca: CertificateAuthority) -> None:
    cert = issue(ca, SERVER)
    for ctx in (tls.server_context(cert), tls.client_context(cert)):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_contexts_are_shared_per_certificate(ca: CertificateAuthority) -> None:
    first, second = issue(ca, SERVER), issue(ca, SERVER)
    assert tls.server_context(first) is tls.server_context(first)
    assert tls.client_context(first) is tls.client_context(first)
    assert tls.server_context(first) is not tls.client_context(first)
    assert tls.server_context(first) is not tls.server_context(second)
