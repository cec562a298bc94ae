"""The mesh end to end on the real kernel: testbed, control plane, agents, real clients.

One 2-node testbed with the mesh (30 s certificates, so rotation happens during the module)
serves every test here. Clients are plain (curl, iperf3, no proxy settings): the agents capture
the enrolled pods' traffic. The SOCKS5 listener is tested as the feature it remains.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns.conftest import unique_prefix
from ztunnel_py.identity.pki import (
    CertificateAuthority,
    WorkloadCertificate,
    generate_key,
    key_to_pem,
    load_certificate,
    make_csr,
)
from ztunnel_py.identity.tls import client_context, verify_server_identity
from ztunnel_py.model import Identity
from ztunnel_py.testbed.pcap import FabricCapture, analyze
from ztunnel_py.testbed.status import PodStatus
from ztunnel_py.testbed.testbed import Testbed
from ztunnel_py.testbed.topology import FABRIC_BRIDGE
from ztunnel_py.testbed.traffic import gbps, http_get, iperf3
from ztunnel_py.transport.hbone import (
    HboneClientConnection,
    HboneHandshakeError,
    HboneStatusError,
    connect_hbone,
)
from ztunnel_py.transport.podsockets import PodNetns

pytestmark = pytest.mark.netns

# Short enough that a rotation (at half-life) comes within seconds of any moment.
CERT_TTL = 30
# A connection that outlives the next rotation by a few seconds.
LONG_LIVED = CERT_TTL // 2 + 10


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.up(prefix=unique_prefix("m"), nodes=2, pods_per_node=2, secret_ttl=f"{CERT_TTL}s")
    try:
        yield tb
    finally:
        tb.down()


def pod(bed: Testbed, prefix: str, node: str) -> PodStatus:
    return next(p for p in bed.status().pods if p.name.startswith(prefix) and p.node == node)


def identity_of(p: PodStatus) -> Identity:
    return Identity("cluster.local", p.namespace, p.service_account)


def agent_log(bed: Testbed, node: str) -> str:
    log = bed.status().node(node).log
    assert log is not None, f"node {node} has no agent log"
    return Path(log).read_text(errors="replace")


def config_dump(bed: Testbed, node: str) -> dict[str, Any]:
    done = bed.exec(node, ["curl", "-sS", "http://127.0.0.1:15000/config_dump"])
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def completed(bed: Testbed, node: str, *needles: str) -> list[str]:
    """The agent's "connection complete" lines holding every one of `needles`, waited for up to
    5 s: the agent logs a connection as it closes, maybe just after the client is done."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            line
            for line in agent_log(bed, node).splitlines()
            if "connection complete" in line and all(n in line for n in needles)
        ]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize(("client_node", "server_node"), [("node1", "node1"), ("node1", "node2")])
def test_plain_curl_is_captured_reaches_pod_and_is_logged_with_identity(
    bed: Testbed, client_node: str, server_node: str
) -> None:
    client, server = pod(bed, "web-", client_node), pod(bed, "echo-", server_node)
    answer = http_get(bed, client.name, server.ip, 8080)
    assert answer.pod == server.name
    assert answer.client.startswith(client.ip + ":")  # the source IP is preserved
    lines = completed(bed, server_node, 'direction="inbound"', str(identity_of(client)))
    assert lines, agent_log(bed, server_node).splitlines()[-5:]


def test_pod_outside_the_mesh_reaches_meshed_pods_in_plaintext(bed: Testbed) -> None:
    """legacy-1 is in a namespace without the ambient label: not captured, and PERMISSIVE
    meshed pods accept its plaintext with its own source address."""
    legacy, server = pod(bed, "legacy-", "node1"), pod(bed, "echo-", "node2")
    assert not legacy.enrolled
    answer = http_get(bed, legacy.name, server.ip, 8080)
    assert answer.pod == server.name and answer.client_ip == legacy.ip
    lines = completed(bed, "node2", 'src.workload="legacy-1"')
    assert lines and all('direction="inbound"' in x and "src.identity" not in x for x in lines)


def test_service_vip_is_balanced_over_both_nodes(bed: Testbed) -> None:
    client = pod(bed, "web-", "node1")
    seen = {http_get(bed, client.name, "10.96.0.10", 80).pod for _ in range(16)}
    assert seen == {"echo-1", "echo-2"}


def test_socks5_listener_serves_pod_ips_and_service_hostnames(bed: Testbed) -> None:
    client, server = pod(bed, "web-", "node1"), pod(bed, "echo-", "node2")
    answer = http_get(bed, client.name, server.ip, 8080, socks5=True)
    assert answer.pod == server.name and answer.client_ip == client.ip
    done = bed.exec(
        client.name,
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--socks5-hostname",
            "127.0.0.1:15080",
            "http://echo.apps.svc.cluster.local/",
        ],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pod"].startswith("echo-")


def test_fabric_capture_shows_only_tls_on_15008(bed: Testbed, tmp_path: Path) -> None:
    client, server = pod(bed, "web-", "node1"), pod(bed, "echo-", "node2")
    marker = "ZTTEST-marker-7f3a9c"
    pcap = tmp_path / "fabric.pcap"
    fabric = bed.status().fabric.netns
    with FabricCapture(fabric, FABRIC_BRIDGE, pcap, "tcp", max_packets=3000):
        # A new source identity/IP pair forces a fresh HBONE connection (so the handshake is
        # on the wire): curl-2 on node2 talks to echo-1 on node1.
        http_get(
            bed,
            pod(bed, "curl-", "node2").name,
            pod(bed, "echo-", "node1").ip,
            8080,
            path=f"/?{marker}",
        )
        http_get(bed, client.name, server.ip, 8080, path=f"/?{marker}")
        iperf3(bed, client.name, server.ip, seconds=2)
    report = analyze(pcap, {15008}, [marker.encode()])
    assert report.tls13_negotiated.get(15008), report
    assert report.tls_records[15008].get("application_data", 0) > 0
    assert "not_tls" not in report.tls_records[15008]
    assert report.markers_in_clear == []
    assert not {8080, 5201} & set(report.tcp_payload_bytes)


def test_iperf3_across_nodes_for_10s(bed: Testbed) -> None:
    client, server = pod(bed, "web-", "node1"), pod(bed, "echo-", "node2")
    result = iperf3(bed, client.name, server.ip, seconds=10)
    assert gbps(result) > 0.05
    assert result["end"]["sum_received"]["seconds"] >= 9


# --- HBONE clients that should be refused -------------------------------------------------


def mesh_ca(bed: Testbed) -> CertificateAuthority:
    return CertificateAuthority.load(bed.state.controlplane_dir / "ca")


def cert_from(ca: CertificateAuthority, identity: Identity) -> WorkloadCertificate:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, identity), identity, timedelta(hours=1))
    return WorkloadCertificate.from_ca_response(identity, key_to_pem(key), chain)


def no_cert_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Like the agent's client context (TLS 1.3, ALPN h2, our roots) but with no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    ctx.load_verify_locations(cadata="".join(cert.roots_pem))
    return ctx


async def dial(
    bed: Testbed,
    cert: WorkloadCertificate,
    server: PodStatus,
    nursery: trio.Nursery,
    context: ssl.SSLContext | None = None,
) -> HboneClientConnection:
    client = pod(bed, "web-", "node1")
    netns = PodNetns.open_path(f"/run/netns/{client.netns}")
    try:
        sock = await netns.connect((server.ip, 15008))
    finally:
        netns.close()
    return await connect_hbone(
        sock,
        context or client_context(cert),
        expected_identities=[identity_of(server)],
        verify=verify_server_identity,
        nursery=nursery,
    )


def test_bad_clients_are_refused_and_others_unaffected(bed: Testbed) -> None:
    server = pod(bed, "echo-", "node2")
    web = identity_of(pod(bed, "web-", "node1"))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(30):
                # A certificate from another CA fails the TLS handshake itself.
                foreign = cert_from(CertificateAuthority.create("cluster.local"), web)
                with pytest.raises(HboneHandshakeError):
                    conn = await dial(bed, foreign, server, nursery)
                    await conn.open_stream(f"{server.ip}:8080")
                # Our CA, but another trust domain: closed right after the handshake.
                other_td = cert_from(mesh_ca(bed), Identity("evil.local", "apps", "web"))
                with pytest.raises(HboneHandshakeError):
                    await dial(bed, other_td, server, nursery)
                # No client certificate at all.
                good = cert_from(mesh_ca(bed), web)
                with pytest.raises(HboneHandshakeError):
                    await dial(bed, good, server, nursery, context=no_cert_context(good))
                # A valid client: a wrong authority is 400, a closed port 503.
                conn = await dial(bed, good, server, nursery)
                with pytest.raises(HboneStatusError) as status:
                    await conn.open_stream("10.244.9.9:8080")
                assert status.value.status == 400
                with pytest.raises(HboneStatusError) as status:
                    await conn.open_stream(f"{server.ip}:9999")
                assert status.value.status == 503
                stream = await conn.open_stream(f"{server.ip}:8080")
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                body = b""
                while chunk := bytes(await stream.receive_some()):
                    body += chunk
                assert b'"pod": "' + server.name.encode() in body.replace(b'":"', b'": "')
                await conn.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Everyone else is unaffected.
    assert http_get(bed, "web-1", server.ip, 8080).pod == server.name


def test_certificate_rotation_keeps_connections_and_new_ones_use_new_cert(
    bed: Testbed,
) -> None:
    """The certificate rotates at half-life: within CERT_TTL / 2 of any moment."""
    server = pod(bed, "echo-", "node2")
    server_id = str(identity_of(server))

    def serial_in_dump() -> str | None:
        for cert in config_dump(bed, "node2").get("certificates", []):
            if cert["identity"] == server_id and cert["certChain"]:
                return str(cert["certChain"][0]["serialNumber"])
        return None

    async def serial_on_wire() -> str:
        good = cert_from(mesh_ca(bed), identity_of(pod(bed, "web-", "node1")))
        async with trio.open_nursery() as nursery:
            conn = await dial(bed, good, server, nursery)
            der = conn.tls.peer_leaf_der()
            await conn.aclose()
            nursery.cancel_scope.cancel()
        assert der is not None
        return str(load_certificate(der).serial_number)

    def served_serial() -> str:
        """The serial on the wire, which /config_dump shows too; read again when a rotation
        fell between the handshake and the dump."""
        for _ in range(3):
            wire = trio.run(serial_on_wire)
            if wire == serial_in_dump():
                return wire
        raise AssertionError("the certificate served never matched the one in /config_dump")

    first = served_serial()
    # A long-lived connection through the mesh, opened before the rotation.
    long_lived = subprocess.Popen(
        bed.exec_argv(
            "web-1", ["iperf3", "-c", server.ip, "-t", str(LONG_LIVED), "-b", "10M", "-J"]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CERT_TTL
        while serial_in_dump() == first and time.monotonic() < deadline:
            time.sleep(1)
        second = served_serial()
        assert second != first, f"the certificate did not rotate within {CERT_TTL} s"
    finally:
        out, _ = long_lived.communicate(timeout=LONG_LIVED + 20)
    assert long_lived.returncode == 0
    result = json.loads(out)
    assert "error" not in result
    assert result["end"]["sum_received"]["seconds"] >= LONG_LIVED - 1
