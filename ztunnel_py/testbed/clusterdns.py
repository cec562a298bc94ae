"""The testbed's cluster DNS, its fake outside world, and every pod's resolv.conf.

What kube-dns/CoreDNS and kubelet do in a cluster, played with Debian's dnsmasq (package
`dnsmasq-base`: the binary alone, no system service answering on the machine's own port 53):

- **cluster DNS**: dnsmasq in namespace `<prefix>dns`, on 10.250.0.5 (and fd00:10:250::5) port
  53, UDP and TCP. It is authoritative for `cluster.local` (`--local`: a name it does not know
  there is NXDOMAIN, never forwarded) and answers `<svc>.<ns>.svc.cluster.local` with the
  cluster IPs of every Service in the directory the control plane watches (a hosts file in a
  `--hostsdir`, which dnsmasq re-reads by inotify, rewritten by `sync` after each change).
  Answers carry a 5 s TTL (CoreDNS's default for the kubernetes zone); nothing is cached, so
  a Service's new address is answered at once.
- **upstream**: every other name is forwarded to a second dnsmasq in the same namespace on
  127.0.0.1:5353, the testbed's stand-in for the Internet's resolvers: it answers the fake zone
  `external.test` (`api.external.test` is the external host, `large.external.test` has
  `LARGE_RECORDS` addresses: an answer too big for 512-byte UDP) and NXDOMAIN for everything
  else (`--address=/#/`). Neither instance reads the machine's resolv.conf or /etc/hosts
  (`--no-resolv --no-hosts`), so no query ever leaves the testbed.
- **the external host**: namespace `<prefix>ext` on 10.250.0.6 (and fd00:10:250::6), outside
  the mesh (no agent captures it), runs the pod server on port 80: what ServiceEntries for
  `api.external.test` point at.
- **resolv.conf**: as kubelet writes it for `dnsPolicy: ClusterFirst`, per pod, in
  `/etc/netns/<pod netns>/resolv.conf`, which `ip netns exec` (so `testbed exec`) bind-mounts
  over /etc/resolv.conf: the cluster DNS as nameserver, `search <ns>.svc.cluster.local
  svc.cluster.local cluster.local` and `options ndots:5`. Removed again by `remove_resolv_conf`
  at teardown (`ip netns delete` leaves /etc/netns alone).

The cluster DNS is reached at its own address, not a Service VIP: the testbed has no kube-proxy,
so a VIP is only reachable through the mesh, and pods outside the mesh must resolve too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ztunnel_py.testbed import resources
from ztunnel_py.testbed.process import ProcessRecord
from ztunnel_py.testbed.state import State
from ztunnel_py.testbed.topology import CLUSTER_DOMAIN, Topology

CLUSTER_DNS = "cluster-dns"
UPSTREAM_DNS = "upstream-dns"
EXTERNAL_SERVER = "external"
UPSTREAM_ZONE = "external.test"
EXTERNAL_HOST = f"api.{UPSTREAM_ZONE}"
LARGE_HOST = f"large.{UPSTREAM_ZONE}"
LARGE_RECORDS = 60
EXTERNAL_PORT = 80
UPSTREAM_PORT = 5353
TTL_SECONDS = 5
NDOTS = 5
NETNS_ETC = Path("/etc/netns")
DNSMASQ = "dnsmasq"


def cluster_dir(state: State) -> Path:
    """The cluster DNS's `--hostsdir`."""
    return state.state_dir / "dns" / "cluster"


def agent_resolv_conf(state: State) -> Path:
    """What the agents forward to: the cluster DNS (a node's resolv.conf, as the ztunnel pod's
    dnsPolicy gives it)."""
    return state.state_dir / "dns" / "resolv.conf"


def upstream_zone_file(state: State) -> Path:
    return state.state_dir / "dns" / "upstream.hosts"


def _dnsmasq(*args: str) -> list[str]:
    # --user=root: the hosts files live under the state dir, which only root may read.
    return [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--bind-interfaces",
        "--log-queries",
        "--log-facility=-",
        *args,
    ]


def cluster_record(topology: Topology, state: State) -> ProcessRecord:
    listen = [f"--listen-address={ip}" for ip in topology.dns_ips]
    return ProcessRecord(
        name=CLUSTER_DNS,
        netns=topology.dns_netns,
        argv=_dnsmasq(
            *listen,
            "--port=53",
            f"--hostsdir={cluster_dir(state)}",
            f"--local=/{CLUSTER_DOMAIN.partition('.')[2]}/",
            f"--server=127.0.0.1#{UPSTREAM_PORT}",
            "--cache-size=0",
            f"--local-ttl={TTL_SECONDS}",
        ),
        log=str(state.log_dir / "cluster-dns.log"),
    )


def upstream_record(topology: Topology, state: State) -> ProcessRecord:
    return ProcessRecord(
        name=UPSTREAM_DNS,
        netns=topology.dns_netns,
        argv=_dnsmasq(
            "--listen-address=127.0.0.1",
            f"--port={UPSTREAM_PORT}",
            f"--addn-hosts={upstream_zone_file(state)}",
            "--address=/#/",
            f"--local-ttl={TTL_SECONDS}",
        ),
        log=str(state.log_dir / "upstream-dns.log"),
    )


def external_record(topology: Topology, state: State, python: str) -> ProcessRecord:
    return ProcessRecord(
        name=EXTERNAL_SERVER,
        netns=topology.external_netns,
        argv=[
            python,
            "-m",
            "ztunnel_py.testbed.podserver",
            "--pod",
            EXTERNAL_SERVER,
            "--namespace",
            EXTERNAL_SERVER,
            "--node",
            "",
            "--port",
            str(EXTERNAL_PORT),
            "--bind",
            "::" if topology.dual_stack else "0.0.0.0",
            "--h2-port",
            "0",
            "--grpc-port",
            "0",
        ],
        log=str(state.log_dir / "external-http.log"),
    )


def upstream_zone(topology: Topology) -> str:
    """The fake outside world's names, as a hosts file."""
    lines = [f"{ip} {EXTERNAL_HOST}" for ip in topology.external_ips]
    # documentation addresses (TEST-NET-2): never routed, only counted
    lines += [f"198.51.100.{i} {LARGE_HOST}" for i in range(1, LARGE_RECORDS + 1)]
    return "\n".join(lines) + "\n"


def service_records(documents: Iterable[object]) -> list[tuple[str, str]]:
    """(address, hostname) of every Service's cluster IPs, as kube-dns answers them; headless
    and ExternalName Services have none."""
    records = []
    for document in documents:
        if not isinstance(document, dict) or document.get("kind") != "Service":
            continue
        meta, spec = document.get("metadata"), document.get("spec")
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            continue
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
        for ip in ips:
            if not isinstance(ip, str) or not isinstance(name, str):
                continue
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(ip)
                records.append((ip, f"{name}.{namespace}.{CLUSTER_DOMAIN}"))
    return records


def write_file(path: Path, text: str) -> None:
    """Write `text` to `path` (its directory made) unless it already says that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    # dnsmasq's inotify watch must only ever see the complete file: write, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sync(state: State) -> None:
    """Rewrite the cluster DNS's records from the Services in the watched directory."""
    records = service_records(resources.documents(state.config_dir))
    write_file(cluster_dir(state) / "services", "".join(f"{ip} {host}\n" for ip, host in records))


def write_zones(topology: Topology, state: State) -> None:
    write_file(upstream_zone_file(state), upstream_zone(topology))
    write_file(agent_resolv_conf(state), "".join(f"nameserver {ip}\n" for ip in topology.dns_ips))
    sync(state)


def resolv_conf(namespace: str, nameservers: Sequence[str]) -> str:
    """What kubelet writes for a pod of `namespace` with `dnsPolicy: ClusterFirst`."""
    domain = CLUSTER_DOMAIN.partition(".")[2]
    search = f"{namespace}.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN} {domain}"
    servers = "".join(f"nameserver {ip}\n" for ip in nameservers)
    return f"search {search}\n{servers}options ndots:{NDOTS}\n"


def write_resolv_conf(netns: str, namespace: str, nameservers: Sequence[str]) -> None:
    write_file(NETNS_ETC / netns / "resolv.conf", resolv_conf(namespace, nameservers))


def remove_resolv_conf(netns: str) -> None:
    shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
