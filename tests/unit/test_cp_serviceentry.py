"""ServiceEntry into the workload API as istiod's ambient index builds it: VIPs allocated for
hosts without addresses (istiod's IP autoallocate controller), kept across translations, implicit
hostname endpoints for DNS resolution, hostname endpoints, and what gets nothing."""

from __future__ import annotations

import ipaddress

from tests.unit.cp_support import store_with, translated, yaml_text
from ztunnel_py.controlplane.sources.yamldocs import parse_documents
from ztunnel_py.controlplane.translate.autoallocate import IPV4_PREFIX, IPV6_PREFIX

EXTERNAL = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: egress, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [api.external.test, "*.wild.test"]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"""


def vips(text: str, key: str) -> list[str]:
    return [str(v.address) for v in translated(text).services[key].vips]


def test_hosts_without_addresses_get_one_vip_per_family_from_istios_ranges() -> None:
    t = translated(EXTERNAL)
    service = t.services["egress/api.external.test"]
    assert [str(v) for v in service.vips] == ["/240.240.0.1", "/2001:2::1"]
    assert all(
        v.address in (IPV4_PREFIX if v.address.version == 4 else IPV6_PREFIX) for v in service.vips
    )
    # wildcards get none (their names cannot be answered with one address)
    assert t.services["egress/*.wild.test"].vips == ()


def test_declared_addresses_resolution_none_and_the_opt_out_label_get_no_allocation() -> None:
    declared = EXTERNAL.replace("resolution: DNS", "resolution: DNS\n  addresses: [10.9.9.9]")
    assert vips(declared, "egress/api.external.test") == ["10.9.9.9"]
    none = EXTERNAL.replace("resolution: DNS", "resolution: NONE")
    assert vips(none, "egress/api.external.test") == []
    opted_out = EXTERNAL.replace(
        "namespace: egress,",
        'namespace: egress, labels: {networking.istio.io/enable-autoallocate-ip: "false"},',
    )
    assert vips(opted_out, "egress/api.external.test") == []


def test_allocation_is_stable_and_freed_addresses_are_not_reused_at_once() -> None:
    second = yaml_text(
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: second, namespace: egress, creationTimestamp: "2024-02-01T00:00:00Z"}
        spec:
          hosts: [second.test]
          resolution: STATIC
          endpoints: [{address: 10.1.1.1}]
          ports: [{number: 80, name: http}]
        """
    )
    store = store_with(("a.yaml", EXTERNAL), ("b.yaml", second))
    services = store.current().services
    assert [str(v.address) for v in services["egress/second.test"].vips] == [
        "240.240.0.2",
        "2001:2::2",
    ]
    # the first ServiceEntry goes away and comes back: the second keeps its addresses, the
    # returning one gets fresh ones (the cursor moved on)
    store.apply({"a.yaml": None})
    assert [str(v.address) for v in store.current().services["egress/second.test"].vips] == [
        "240.240.0.2",
        "2001:2::2",
    ]
    store.apply({"a.yaml": parse_documents(EXTERNAL, "a.yaml")})
    services = store.current().services
    assert [str(v.address) for v in services["egress/api.external.test"].vips] == [
        "240.240.0.3",
        "2001:2::3",
    ]
    assert [str(v.address) for v in services["egress/second.test"].vips] == [
        "240.240.0.2",
        "2001:2::2",
    ]


def test_status_addresses_written_by_istiod_are_honoured_and_conflicts_reassigned() -> None:
    with_status = EXTERNAL + yaml_text(
        """
        status:
          addresses:
          - {host: api.external.test, value: 240.240.7.7}
          - {host: api.external.test, value: "2001:2::77"}
        """
    )
    assert vips(with_status, "egress/api.external.test") == ["240.240.7.7", "2001:2::77"]
    # a declared address inside the range is never handed out to another host
    claims = yaml_text(
        """
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: claims, namespace: other}
        spec:
          hosts: [claims.test]
          addresses: [240.240.7.7]
          resolution: STATIC
          endpoints: [{address: 10.1.1.1}]
        """
    )
    t = translated(with_status + "---\n" + claims)
    assert [str(v.address) for v in t.services["other/claims.test"].vips] == ["240.240.7.7"]
    reassigned = [str(v.address) for v in t.services["egress/api.external.test"].vips]
    assert reassigned == ["240.240.0.1", "2001:2::77"]


def test_dns_resolution_without_endpoints_gets_one_hostname_workload_per_host() -> None:
    t = translated(EXTERNAL)
    uid = "Kubernetes/networking.istio.io/ServiceEntry/egress/external/api.external.test"
    workload = t.workloads[uid]
    assert workload.hostname == "api.external.test"
    assert workload.addresses == ()
    assert workload.services == {"egress/api.external.test": {80: 80}}
    wild = t.workloads["Kubernetes/networking.istio.io/ServiceEntry/egress/external/*.wild.test"]
    assert wild.services == {"egress/*.wild.test": {80: 80}}


def test_endpoints_named_by_host_are_hostname_workloads() -> None:
    text = EXTERNAL.replace(
        "resolution: DNS", "resolution: DNS\n  endpoints: [{address: origin.test}]"
    )
    t = translated(text)
    (workload,) = t.workloads.values()
    assert workload.hostname == "origin.test"
    assert set(workload.services) == {"egress/api.external.test", "egress/*.wild.test"}


def test_static_endpoints_keep_their_addresses() -> None:
    text = EXTERNAL.replace(
        "resolution: DNS", "resolution: STATIC\n  endpoints: [{address: 10.250.0.6}]"
    )
    t = translated(text)
    (workload,) = t.workloads.values()
    assert workload.addresses == (ipaddress.ip_address("10.250.0.6"),)
    assert workload.hostname == ""
