"""TLS contexts for HBONE and the peer checks that complete them (docs/istio-compat.md, "TLS"
and "Identities and peer verification").

Both sides speak TLS 1.3 only, offer ALPN `h2` only, accept only the two AES-GCM suites, issue
and use no session tickets (no resumption) and send no SNI. Each side presents its workload chain
and verifies the peer's chain against the trust anchors the CA returned.

Python's `ssl` cannot narrow the TLS 1.3 suites OpenSSL offers (`set_ciphers` covers TLS 1.2 and
older; there is no `set_ciphersuites`), and OpenSSL's default list adds ChaCha20-Poly1305. So the
suite is checked after the handshake, with the peer checks below: a connection that negotiated
any other suite is refused before a byte of application data. Our own peers agree on
AES-256-GCM, the first suite OpenSSL offers.

Python's `ssl` has no certificate-verification callback, so the SPIFFE checks that rustls runs
inside ztunnel's handshake run here right AFTER the handshake and BEFORE any application byte is
read or written: the caller does the handshake, then calls `check_server_peer` (client side) or
`check_client_peer` (server side), and closes the connection if they raise. The ALPN check
belongs there too: an OpenSSL server whose ALPN list does not overlap the client's completes the
handshake without a protocol instead of failing it.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol

from ztunnel_py.identity.pki import WorkloadCertificate, identities_from_cert, uri_sans
from ztunnel_py.model.identity import Identity
from ztunnel_py.transport.hbone.connection import HBONE_CIPHER_SUITES

ALPN_H2 = "h2"


class TlsConnection(Protocol):
    """What the post-handshake checks read: `ssl.SSLObject`, `ssl.SSLSocket`, `trio.SSLStream`."""

    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...

    def selected_alpn_protocol(self) -> str | None: ...

    def cipher(self) -> tuple[str, str, int] | None: ...


class PeerIdentityError(Exception):
    """The peer completed the TLS handshake but is not who we accept; close the connection."""


def server_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """The shared server context for `cert` (see `build_server_context`); treat as read-only.

    Building a context costs about a millisecond (key and chain parsing), too much per
    connection, so contexts are memoized per certificate (identity, serial).
    """
    return _cached("server", cert, build_server_context)


def client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """The shared client context for `cert` (see `build_client_context`); treat as read-only."""
    return _cached("client", cert, build_client_context)


def build_server_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Server side of HBONE: presents `cert`, requires a client certificate chaining to its roots.

    After the handshake call `check_client_peer` (trust domain and ALPN).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, cert)
    # TLS 1.3 resumption only works through tickets; issuing none disables it.
    ctx.num_tickets = 0
    return ctx


def build_client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Client side of HBONE: presents `cert`, verifies the server chain against its roots.

    Host names are not checked (`check_hostname=False`) and no SNI is sent: wrap sockets with
    `server_hostname=None`, then call `check_server_peer` with the expected identities.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _configure(ctx, cert)
    return ctx


_CACHE_SIZE = 256
_contexts: OrderedDict[tuple[str, Identity, int], ssl.SSLContext] = OrderedDict()


def _cached(
    side: str, cert: WorkloadCertificate, build: Callable[[WorkloadCertificate], ssl.SSLContext]
) -> ssl.SSLContext:
    key = (side, cert.identity, cert.serial)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _contexts[key] = build(cert)
        if len(_contexts) > _CACHE_SIZE:
            _contexts.popitem(last=False)
    else:
        _contexts.move_to_end(key)
    return ctx


def verify_server_identity(peer_leaf_der: bytes | None, expected: Sequence[Identity]) -> Identity:
    """Accept the server only if ANY of its URI SANs equals ANY expected identity.

    Returns the matching identity. Non-URI SANs (DNS, IP) are never considered.
    """
    if not peer_leaf_der:
        raise PeerIdentityError("server presented no certificate")
    sans = uri_sans(peer_leaf_der)
    wanted = {str(i): i for i in expected}
    for uri in sans:
        if uri in wanted:
            return wanted[uri]
    raise PeerIdentityError(
        f"server identity {_describe(sans)} does not match any expected identity "
        f"[{', '.join(wanted) or 'none'}]"
    )


def verify_client_identity(peer_leaf_der: bytes | None, own_trust_domain: str) -> Identity:
    """Accept the client only if its leaf has a SPIFFE URI SAN in our trust domain.

    Returns that identity (the peer identity used by authorization).
    """
    if not peer_leaf_der:
        raise PeerIdentityError("client presented no certificate")
    for identity in identities_from_cert(peer_leaf_der):
        if identity.trust_domain == own_trust_domain:
            return identity
    raise PeerIdentityError(
        f"peer did not present the expected trustdomain ({own_trust_domain}); "
        f"it presented {_describe(uri_sans(peer_leaf_der))}"
    )


def check_server_peer(conn: TlsConnection, expected: Sequence[Identity]) -> Identity:
    """Client-side post-handshake checks: ALPN `h2` and an AES-GCM suite were negotiated, and
    the server's SAN matches."""
    _check_alpn(conn)
    _check_suite(conn)
    return verify_server_identity(conn.getpeercert(binary_form=True), expected)


def check_client_peer(conn: TlsConnection, own_trust_domain: str) -> Identity:
    """Server-side post-handshake checks: ALPN `h2`, an AES-GCM suite, the client's trust
    domain."""
    _check_alpn(conn)
    _check_suite(conn)
    return verify_client_identity(conn.getpeercert(binary_form=True), own_trust_domain)


def _check_alpn(conn: TlsConnection) -> None:
    selected = conn.selected_alpn_protocol()
    if selected != ALPN_H2:
        raise PeerIdentityError(f"peer did not negotiate ALPN {ALPN_H2!r} (got {selected!r})")


def _check_suite(conn: TlsConnection) -> None:
    cipher = conn.cipher()
    if cipher is None or cipher[0] not in HBONE_CIPHER_SUITES:
        raise PeerIdentityError(
            f"peer negotiated cipher suite {cipher[0] if cipher else None}; only "
            f"{', '.join(HBONE_CIPHER_SUITES)} are allowed"
        )


def _describe(sans: list[str]) -> str:
    return "[" + ", ".join(sans) + "]" if sans else "(no URI SAN)"


def _configure(ctx: ssl.SSLContext, cert: WorkloadCertificate) -> None:
    if not cert.roots_pem:
        raise ValueError(f"certificate for {cert.identity} has no trust roots")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.verify_mode = ssl.CERT_REQUIRED
    # The CA's roots are trust anchors even when they are not self-signed (webpki semantics).
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata="".join(cert.roots_pem))
    with _memfd("".join([cert.key_pem, *cert.chain_pem]).encode("ascii")) as path:
        ctx.load_cert_chain(path)


@contextlib.contextmanager
def _memfd(data: bytes) -> Iterator[str]:
    """An anonymous in-memory file readable by path for the duration of the block.

    `load_cert_chain` only reads files; a memfd keeps the private key off every filesystem and
    vanishes when closed.
    """
    fd = os.memfd_create("ztunnel-py-cert", os.MFD_CLOEXEC)
    try:
        _write_all(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
