"""The DNS proxy's answers, as ztunnel gives them: a sans-IO core over the mesh state.

`MeshResolver.resolve(client, query)` takes one query message from a pod (its workload known)
and either answers it from the mesh or says to forward it upstream. No sockets, no clock: the
trio server (`server.py`) feeds it and the tests drive it directly.

What is answered (ztunnel's `src/dns/server.rs`):

- only A and AAAA questions of class IN; every other type is forwarded;
- the requested name and its aliases, tried in order: the name itself; its Kubernetes FQDN
  expansions, by label count (`svc` -> `svc.<client ns>.svc.<domain>`; `svc.ns` ->
  `svc.ns.svc.<domain>` and the pod form `svc.ns.<client ns>.svc.<domain>`; `svc.ns.svc` ->
  `svc.ns.svc.<domain>`, ...); then, server-side, the name stripped of each of the client's
  search domains (kubelet's `<ns>.svc.<domain> svc.<domain> <domain>`) and that stripped name's
  expansions. So a client whose resolver appends search domains (`echo` asked as
  `echo.apps.svc.cluster.local`, or `api.external.test.apps.svc.cluster.local` on the first
  try with ndots:5) gets the mesh's answer on the first query;
- each alias is matched against service hostnames, then against wildcards of decreasing
  specificity (`a.b.example.com`, `*.b.example.com`, `*.example.com`, `*.com`), so
  ServiceEntry hosts like `*.example.com` answer;
- among services of one hostname in several namespaces: the client's namespace first, then the
  preferred namespace (ztunnel's PREFERED_SERVICE_NAMESPACE), then a canonical one, else any;
- services without VIPs are skipped (the name is forwarded), except Kubernetes headless
  services (`*.svc.<domain>`), answered with their endpoints' addresses;
- a found name answers authoritatively (AA) with the service's VIPs of the asked family on the
  client's network, shuffled, TTL 30 s; a name found by stripping a search domain gets a CNAME
  from the asked name to the stripped one first (not for wildcard matches). A found name
  without addresses of that family (or whose `ipFamilies` exclude it) is an empty NOERROR,
  never NXDOMAIN: the name exists;
- everything else is forwarded, and the upstream's answer (NXDOMAIN included) is relayed.

`encode(response, limit)` renders a response within a size limit, dropping trailing answer
records and setting TC when it does not fit (UDP: 512 bytes, or the client's EDNS payload
size), so the client retries over TCP, where the limit is 65535.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ztunnel_py.model import IPAddress, Service, Workload
from ztunnel_py.model.workload import IpFamilies
from ztunnel_py.state.mesh import ProxyState

TTL_SECONDS = 30
UDP_LIMIT = 512
TCP_LIMIT = 65535
# The EDNS payload size we announce (the DNS flag day 2020 value).
EDNS_PAYLOAD = 1232
_SVC = b"svc"


@dataclass(frozen=True, slots=True)
class Alias:
    """One name to try for the asked one; `stripped` when a search domain was removed."""

    name: dns.name.Name
    stripped: dns.name.Name | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The core's verdict: `response` to send, or None to forward the query upstream."""

    response: dns.message.Message | None
    result: str  # for the DNS access log: success, no records, forward, ...
    records: int = 0


FORWARD_UNSUPPORTED = Resolution(None, "forward: not an A or AAAA question")
FORWARD_UNKNOWN = Resolution(None, "forward: not a mesh name")


def _labels(name: dns.name.Name) -> int:
    """Labels of an absolute name, not counting the root."""
    return len(name.labels) - 1 if name.is_absolute() else len(name.labels)


def _absolute(text: str) -> dns.name.Name:
    return dns.name.from_text(text.rstrip(".") + ".")


def wildcards(name: dns.name.Name) -> list[dns.name.Name]:
    """The name, then `*.` over each parent but the last: `a.b.c.` -> `*.b.c.`, `*.c.`."""
    out = [name]
    while _labels(name) > 1:
        name = name.parent()
        out.append(dns.name.Name((b"*", *name.labels)))
    return out


def host_key(name: dns.name.Name) -> str:
    """A name as the state indexes hostnames: lower case, no trailing dot."""
    return name.to_text(omit_final_dot=True).lower()


class MeshResolver:
    """Answers pods' A/AAAA questions from a `ProxyState` (see the module docstring)."""

    def __init__(
        self,
        state: ProxyState,
        domain: str = "cluster.local",
        preferred_namespace: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.domain = _absolute(domain)
        self.svc_domain = dns.name.Name((_SVC, *self.domain.labels))
        self.preferred_namespace = preferred_namespace
        self.rng = rng if rng is not None else random.Random()
        # hostnames of Kubernetes services end with this (their headless ones still answer)
        self._kube_suffix = "." + host_key(self.svc_domain)

    def search_domains(self, namespace: str) -> list[dns.name.Name]:
        """The search list kubelet gives a pod of `namespace`."""
        namespaced = dns.name.Name((namespace.encode(), *self.svc_domain.labels))
        return [namespaced, self.svc_domain, self.domain]

    # --- names ---------------------------------------------------------------------------------

    def kube_fqdns(self, name: dns.name.Name, client_namespace: str) -> list[dns.name.Name]:
        """The Kubernetes FQDNs a short name can stand for, as ztunnel expands them."""
        namespaced = self.search_domains(client_namespace)[0]
        count = _labels(name)
        relative = name.relativize(dns.name.root)
        ends_in_svc = count >= 1 and relative.labels[-1].lower() == _SVC
        if count == 1:
            return [relative.concatenate(namespaced)]
        if count == 2:
            return [relative.concatenate(self.svc_domain), relative.concatenate(namespaced)]
        if count == 3:
            out = [relative.concatenate(self.domain)] if ends_in_svc else []
            return [*out, relative.concatenate(self.svc_domain)]
        if count == 4 and ends_in_svc:
            return [relative.concatenate(self.domain)]
        return []

    def aliases(self, name: dns.name.Name, client_namespace: str) -> list[Alias]:
        """Every name to try for `name`, in order, without repeats."""
        out: list[Alias] = []
        seen: set[dns.name.Name] = set()

        def add(alias: Alias) -> None:
            if alias.name not in seen:
                seen.add(alias.name)
                out.append(alias)

        add(Alias(name))
        for fqdn in self.kube_fqdns(name, client_namespace):
            add(Alias(fqdn))
        for search in self.search_domains(client_namespace):
            if name != search and name.is_subdomain(search):
                stripped = name.relativize(search).concatenate(dns.name.root)
                add(Alias(stripped, stripped))
                for fqdn in self.kube_fqdns(stripped, client_namespace):
                    add(Alias(fqdn, stripped))
        return out

    # --- matching ------------------------------------------------------------------------------

    def answerable(self, service: Service) -> bool:
        """Whether the proxy answers for `service`: it has VIPs, or is a Kubernetes headless
        service."""
        return bool(service.vips) or service.hostname.lower().endswith(self._kube_suffix)

    def best_service(self, services: Sequence[Service], client_namespace: str) -> Service | None:
        """The client's namespace's service, else the preferred namespace's, else a canonical
        one, else the first (by key, so the answer is stable)."""

        def rank(s: Service) -> int:
            if s.namespace == client_namespace:
                return 3
            if self.preferred_namespace and s.namespace == self.preferred_namespace:
                return 2
            return 1 if s.canonical else 0

        candidates = sorted(services, key=lambda s: s.key)
        return max(candidates, key=rank, default=None)

    def find(self, client: Workload, name: dns.name.Name) -> tuple[Service, Alias, bool] | None:
        """The service answering `name` for `client`: (service, the alias that matched, whether
        a wildcard matched)."""
        for alias in self.aliases(name, client.namespace):
            for candidate in wildcards(alias.name):
                services = [
                    s
                    for s in self.state.services_by_hostname(host_key(candidate))
                    if self.answerable(s)
                ]
                service = self.best_service(services, client.namespace)
                if service is not None:
                    return service, alias, candidate.is_wild()
        return None

    def addresses(self, client: Workload, service: Service, rdtype: int) -> list[IPAddress]:
        """The service's addresses of the record type's family for `client`, shuffled."""
        version = 4 if rdtype == dns.rdatatype.A else 6
        if service.vips:
            found = [
                v.address
                for v in service.vips
                if v.address.version == version and v.network == client.network
            ]
        else:
            # headless: one address of the family per endpoint
            found = []
            for workload in self.state.service_workloads(service):
                first = next((a for a in workload.addresses if a.version == version), None)
                if first is not None:
                    found.append(first)
        self.rng.shuffle(found)
        return found

    # --- the verdict ---------------------------------------------------------------------------

    def resolve(self, client: Workload, query: dns.message.Message) -> Resolution:
        """Answer `query` (a valid single-question QUERY) from the mesh, or say to forward."""
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or question.rdtype not in (
            dns.rdatatype.A,
            dns.rdatatype.AAAA,
        ):
            return FORWARD_UNSUPPORTED
        found = self.find(client, question.name)
        if found is None:
            return FORWARD_UNKNOWN
        service, alias, wildcard = found
        response = authoritative_response(query)
        if not _family_allowed(service, question.rdtype):
            return Resolution(response, "service does not support this record type")
        addresses = self.addresses(client, service, question.rdtype)
        if not addresses:
            return Resolution(response, "no records")
        owner = question.name
        if alias.stripped is not None and not wildcard:
            response.answer.append(
                dns.rrset.from_text_list(
                    owner, TTL_SECONDS, "IN", "CNAME", [alias.stripped.to_text()]
                )
            )
            owner = alias.stripped
        response.answer.append(
            dns.rrset.from_text_list(
                owner,
                TTL_SECONDS,
                "IN",
                dns.rdatatype.to_text(question.rdtype),
                [str(a) for a in addresses],
            )
        )
        return Resolution(response, "success", len(addresses))


def _family_allowed(service: Service, rdtype: int) -> bool:
    if service.ip_families is IpFamilies.IPV4:
        return rdtype != dns.rdatatype.AAAA
    if service.ip_families is IpFamilies.IPV6:
        return rdtype != dns.rdatatype.A
    return True


# --- messages ----------------------------------------------------------------------------------


class BadQuery(Exception):
    """A datagram that is not a DNS query we can answer; `response` (if any) says so."""

    def __init__(self, reason: str, response: dns.message.Message | None = None) -> None:
        super().__init__(reason)
        self.response = response


def parse_query(wire: bytes) -> dns.message.Message:
    """A query message from the wire; BadQuery (with FORMERR/NOTIMP to send, when the header
    could be read) for anything else."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError) as e:
        header = _header_only(wire)
        raise BadQuery(f"malformed message: {e}", header) from e
    if query.flags & dns.flags.QR:
        raise BadQuery("a response, not a query")
    if query.opcode() != dns.opcode.QUERY:
        raise BadQuery(
            f"opcode {dns.opcode.to_text(query.opcode())} is not supported",
            _error(query, dns.rcode.NOTIMP),
        )
    if len(query.question) != 1:
        raise BadQuery(
            f"{len(query.question)} questions (one is needed)", _error(query, dns.rcode.FORMERR)
        )
    return query


def _header_only(wire: bytes) -> dns.message.Message | None:
    """A FORMERR for a message whose 12-byte header at least arrived (and is a query)."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    response = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    response.flags = dns.flags.QR | (int.from_bytes(wire[2:4], "big") & dns.flags.RD)
    response.set_rcode(dns.rcode.FORMERR)
    return response


def _error(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    response.set_rcode(rcode)
    return response


def server_failure(query: dns.message.Message) -> dns.message.Message:
    return _error(query, dns.rcode.SERVFAIL)


def authoritative_response(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True, our_payload=EDNS_PAYLOAD)
    response.flags |= dns.flags.AA
    return response


def udp_limit(query: dns.message.Message | None) -> int:
    """How large a UDP answer to this query may be: 512 bytes, or its EDNS payload size."""
    if query is None or query.edns < 0:
        return UDP_LIMIT
    return max(UDP_LIMIT, min(query.payload, TCP_LIMIT))


def encode(response: dns.message.Message, limit: int) -> bytes:
    """The response on the wire within `limit` bytes: answer records are dropped from the end
    (then the authority and additional sections) and TC is set when it does not fit."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        pass
    return _Sections.of(response).fit(response, limit)


@dataclass(slots=True)
class _Sections:
    """The answer section as (rrset, rdata) pairs, so whole records can be dropped."""

    records: list[tuple[dns.rrset.RRset, object]]

    @classmethod
    def of(cls, response: dns.message.Message) -> _Sections:
        return cls([(rrset, rdata) for rrset in response.answer for rdata in rrset])

    def render(self, response: dns.message.Message, keep: int, limit: int) -> bytes | None:
        out = dns.message.Message(id=response.id)
        out.flags = response.flags | dns.flags.TC
        out.set_rcode(response.rcode())
        out.question = list(response.question)
        if response.edns >= 0:
            out.use_edns(response.edns, response.ednsflags, response.payload)
        rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        for rrset, rdata in self.records[:keep]:
            key = (rrset.name, rrset.rdtype)
            if key not in rrsets:
                rrsets[key] = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
                out.answer.append(rrsets[key])
            rrsets[key].add(rdata, rrset.ttl)  # type: ignore[arg-type]
        try:
            return out.to_wire(max_size=limit)
        except dns.exception.TooBig:
            return None

    def fit(self, response: dns.message.Message, limit: int) -> bytes:
        """The most leading answer records that fit (binary search over the count)."""
        lo, hi = 0, len(self.records)
        best = self.render(response, 0, limit)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            wire = self.render(response, mid, limit)
            if wire is None:
                hi = mid - 1
            else:
                lo, best = mid, wire
        if best is None:
            # Not even the question fits (a limit under the header's size): header alone.
            bare = dns.message.Message(id=response.id)
            bare.flags = response.flags | dns.flags.TC
            return bare.to_wire()
        return best
