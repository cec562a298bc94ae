"""HTTPRoute rules and VirtualService `http` routes to the `Route`s a waypoint applies to one
service, the way istiod builds a waypoint's inbound route table
(`pilot/pkg/config/kube/gateway/conversion.go`, `pilot/pkg/networking/core/route/route.go`).

HTTPRoute (GAMMA: `parentRefs` to a Service, optionally a port or a port name): each rule is split
into one route per match (a rule without matches matches `PathPrefix /`); the routes of every
HTTPRoute of one namespace attached to the service are concatenated oldest route first
(creation time, then namespace/name) and stably sorted by Gateway API precedence: Exact path,
then PathPrefix, then RegularExpression, then no path; a longer path value first; a method
before none; more headers first; more query parameters first. PathPrefix values lose a trailing
`/` and match whole segments. Filters: Request/ResponseHeaderModifier (names lower-cased, first
of a name wins), RequestRedirect (status 302 by default), URLRewrite (`ReplacePrefixMatch`,
`ReplaceFullPath`, hostname), RequestMirror (`percent` or `fraction`); per-backend filters may
only modify headers. Any other filter makes the rule answer 500, as Gateway API requires of a
filter that cannot be applied. backendRefs: weight 1 by default, weight 0 dropped; a ref to a
missing Service, another namespace (no ReferenceGrant here), an unsupported kind or without a
port stays as an unresolved backend whose share answers 500; a rule with no weight left answers
500 unless it redirects. `timeouts.request` is the route timeout; `timeouts.backendRequest` is
the per-try timeout when the rule retries, else it replaces the route timeout; `0s` means none.
`retry`: 2 attempts by default, on connect-failure, refused-stream, unavailable, cancelled and
the listed codes.

VirtualService: routes are kept in order (first match wins) and translation stops at the first
route without `match` (the rest is unreachable). A match entry: `uri` (a plain string prefix, not
segment-wise), `ignoreUriCase` (exact and prefix), `headers` (an empty condition is presence),
`withoutHeaders`, `queryParams`, exact `method`, `authority`, `port`; `sourceLabels` and
`sourceNamespace` are dropped at waypoints (istiod does the same); an entry whose `gateways`
leave out `mesh` does not apply. Destinations: short hosts resolve in the VirtualService's
namespace; without a port, a single-port destination uses its port and otherwise the port the
request arrived on (the route is repeated per port of the served service, as istiod builds one
route table per port). Weights are relative; weight 0 is dropped when other destinations remain.
`redirect` (301 by default), `rewrite.uri` (replaces the matched prefix), `uriRegexRewrite` when
it rewrites the whole path, `rewrite.authority`, `directResponse`, `headers` (route and
destination), `timeout` (`0s`: none), `retries` (attempts 0 disables; `retryOn` conditions, with
status codes given as numbers turned into `retriable-status-codes`), `fault` (fixed delay and
abort by HTTP or gRPC status, with `percentage`, else the deprecated integer `percent`, else
none), `mirror` with `mirrorPercentage` (100 by default) and `mirrors`.

Whatever cannot be applied is reported as a warning naming the field, and left out (or, where
leaving it out would route traffic somewhere it should not go, the route is left out).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ztunnel_py.controlplane.resources import Resource
from ztunnel_py.controlplane.validation.routing import parse_duration
from ztunnel_py.model import Service
from ztunnel_py.model.http import (
    Backend,
    DirectResponse,
    Fault,
    HeaderMatch,
    HeaderOps,
    MatchKind,
    Mirror,
    PathMatch,
    QueryMatch,
    Redirect,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
)

Warn = Callable[[Resource, str, str], None]

GATEWAY_GROUP = "gateway.networking.k8s.io"
ISTIO_NETWORKING_GROUP = "networking.istio.io"
CORE_GROUPS = ("", "core")
MESH_GATEWAY = "mesh"

# Istio's default retry conditions for Gateway API retries and for VirtualService retries
# without retryOn (route/retry DefaultPolicy).
GATEWAY_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled")
DEFAULT_RETRY_ON = (*GATEWAY_RETRY_ON, "retriable-status-codes")
DEFAULT_RETRIABLE_CODES = (503,)
RETRIABLE_STATUS_CODES = "retriable-status-codes"
_GRPC_STATUS_NAMES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
    "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
)
GRPC_STATUS = {name: code for code, name in enumerate(_GRPC_STATUS_NAMES.split(" "))}
_WHOLE_PATH_PATTERNS = ("/.*", "^/.*$", ".*", "^.*$", "/(.*)", "^/(.*)$")
# a destination port to fill in with the port the request arrived on
_REQUEST_PORT = 0


def resolve_host(host: str, namespace: str, domain_suffix: str) -> str:
    """istiod's ResolveShortnameToFQDN: a name without a dot is a Service of `namespace`."""
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.svc.{domain_suffix}"


def host_matches(pattern: str, hostname: str) -> bool:
    """A VirtualService or DestinationRule host (`*`, `*.suffix`, exact) against a hostname."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


def creation_order(resource: Resource) -> tuple[str, str, str]:
    """Oldest first, then namespace/name (istiod's sortConfigByCreationTime)."""
    return (resource.metadata.get("creationTimestamp") or "", resource.namespace, resource.name)


def _header_ops(entries: Mapping[str, Any] | None, *, listed: bool) -> HeaderOps:
    """Gateway API header modifiers (`listed`: lists of {name, value}) or VirtualService header
    operations (maps); names lower-cased, the first of a name wins."""
    if not entries:
        return HeaderOps()

    def pairs(value: Any) -> tuple[tuple[str, str], ...]:
        items = (
            [(e["name"], e["value"]) for e in value or ()]
            if listed
            else list((value or {}).items())
        )
        out: dict[str, str] = {}
        for name, v in items:
            out.setdefault(str(name).lower(), str(v))
        return tuple(out.items())

    remove = tuple(dict.fromkeys(str(n).lower() for n in entries.get("remove") or ()))
    return HeaderOps(set=pairs(entries.get("set")), add=pairs(entries.get("add")), remove=remove)


class RouteCompiler:
    """Compiles routes for the services waypoints serve; reports problems through `warn`."""

    def __init__(
        self,
        services: Mapping[str, Service],
        kubernetes_services: Mapping[tuple[str, str], Resource],
        domain_suffix: str,
        warn: Warn,
    ) -> None:
        self.services = services
        self.kubernetes_services = kubernetes_services
        self.domain_suffix = domain_suffix
        self.warn = warn
        self.by_hostname: dict[str, list[Service]] = {}
        for service in services.values():
            self.by_hostname.setdefault(service.hostname, []).append(service)

    # --- lookups -------------------------------------------------------------------------------

    def service_by_host(self, host: str, namespace: str) -> Service | None:
        """The service with `host`, preferring one in `namespace` (ServiceEntries may repeat a
        host in several namespaces)."""
        found = self.by_hostname.get(host) or []
        for service in found:
            if service.namespace == namespace:
                return service
        return found[0] if found else None

    def kubernetes_service(self, namespace: str, name: str) -> Service | None:
        resource = self.kubernetes_services.get((namespace, name))
        if resource is None:
            return None
        return self.services.get(f"{namespace}/{name}.{namespace}.svc.{self.domain_suffix}")

    # --- HTTPRoute -----------------------------------------------------------------------------

    def gateway_routes(self, route: Resource, port: int | None) -> list[Route]:
        """Every rule of an HTTPRoute, split per match, for a parent (with its port, if any);
        unsorted (`sort_gateway_routes` orders the routes of all HTTPRoutes together)."""
        out: list[Route] = []
        for i, rule in enumerate(route.spec.get("rules") or ()):
            where = f"spec.rules[{i}]"
            base = self._gateway_rule(route, rule, i, where)
            matches = rule.get("matches") or [{}]
            for j, match in enumerate(matches):
                m = self._gateway_match(route, match, port, f"{where}.matches[{j}]")
                if m is not None:
                    out.append(dataclasses.replace(base, matches=(m,)))
        return out

    def _gateway_match(
        self, route: Resource, match: Mapping[str, Any], port: int | None, where: str
    ) -> RouteMatch | None:
        path = match.get("path") or {}
        kind = path.get("type", "PathPrefix")
        value = path.get("value") or "/"  # null is unset, as in Kubernetes
        try:
            if kind == "Exact":
                pm = PathMatch(MatchKind.EXACT, value)
            elif kind == "RegularExpression":
                pm = PathMatch(MatchKind.REGEX, value)
            else:
                pm = PathMatch(MatchKind.PREFIX, value.rstrip("/") or "/")
            headers: dict[str, HeaderMatch] = {}
            for h in match.get("headers") or ():
                regex = h.get("type") == "RegularExpression"
                kind_ = MatchKind.REGEX if regex else MatchKind.EXACT
                headers.setdefault(h["name"].lower(), HeaderMatch(h["name"], kind_, h["value"]))
            query: dict[str, QueryMatch] = {}
            for q in match.get("queryParams") or ():
                regex = q.get("type") == "RegularExpression"
                kind_ = MatchKind.REGEX if regex else MatchKind.EXACT
                query.setdefault(q["name"], QueryMatch(q["name"], kind_, q["value"]))
        except ValueError as e:
            self.warn(route, where, f"{e}: this match is left out")
            return None
        return RouteMatch(
            path=pm,
            method=match.get("method"),
            headers=tuple(headers.values()),
            query=tuple(query.values()),
            port=port,
        )

    def _gateway_rule(
        self, route: Resource, rule: Mapping[str, Any], index: int, where: str
    ) -> Route:
        name = rule.get("name") or f"{route.namespace}.{route.name}.{index}"
        origin = f"HTTPRoute {route.namespace}/{route.name} rule {index}"
        request = response = HeaderOps()
        redirect: Redirect | None = None
        rewrite: Rewrite | None = None
        mirrors: list[Mirror] = []
        failed = False
        for k, f in enumerate(rule.get("filters") or ()):
            at = f"{where}.filters[{k}]"
            kind = f["type"]
            if kind == "RequestHeaderModifier":
                request = _header_ops(f.get("requestHeaderModifier"), listed=True)
            elif kind == "ResponseHeaderModifier":
                response = _header_ops(f.get("responseHeaderModifier"), listed=True)
            elif kind == "RequestRedirect":
                redirect = _gateway_redirect(f.get("requestRedirect") or {})
            elif kind == "URLRewrite":
                rewrite = _gateway_rewrite(f.get("urlRewrite") or {})
            elif kind == "RequestMirror":
                mirror = self._gateway_mirror(route, f.get("requestMirror") or {}, at)
                if mirror is not None:
                    mirrors.append(mirror)
            elif kind == "CORS":
                self.warn(route, at, "the CORS filter is not supported by waypoints: ignored")
            else:
                self.warn(
                    route,
                    at,
                    f"filter {kind} is not supported: requests matching this rule get 500, as "
                    "Gateway API requires for a filter that cannot be applied",
                )
                failed = True
        if rule.get("sessionPersistence"):
            self.warn(route, f"{where}.sessionPersistence", "not supported by waypoints: ignored")
        backends = [] if failed else self._gateway_backends(route, rule, where)
        direct = None
        if failed or (not backends and redirect is None):
            direct = DirectResponse(500)
            backends, redirect, rewrite, mirrors = [], None, None, []
        timeout, retries = self._gateway_timeouts(route, rule, where)
        return Route(
            name=name,
            backends=tuple(backends),
            redirect=redirect,
            direct_response=direct,
            rewrite=rewrite,
            request_headers=request,
            response_headers=response,
            timeout=timeout,
            retries=retries,
            mirrors=tuple(mirrors),
            origin=origin,
        )

    def _gateway_mirror(self, route: Resource, m: Mapping[str, Any], where: str) -> Mirror | None:
        backend, problem = self._backend_ref(route, m["backendRef"])
        if problem is not None:
            self.warn(route, f"{where}.backendRef", f"{problem}: not mirrored")
            return None
        percent = float(m.get("percent", 100))
        fraction = m.get("fraction")
        if fraction is not None:
            percent = fraction["numerator"] * 100 / fraction.get("denominator", 100)
        return Mirror(backend, percent)

    def _backend_ref(self, route: Resource, ref: Mapping[str, Any]) -> tuple[Backend, str | None]:
        """The backend a backendRef names, or an unresolved one and why."""
        group, kind = ref.get("group", ""), ref.get("kind", "Service")
        namespace = ref.get("namespace", route.namespace)
        name, port = ref["name"], ref.get("port")
        weight = ref.get("weight", 1)
        unresolved = Backend(f"{route.namespace}/", port or 0, weight)
        if namespace != route.namespace:
            return unresolved, (
                f"backend {namespace}/{name} is in another namespace, which needs a "
                "ReferenceGrant (not supported)"
            )
        service: Service | None = None
        if kind == "Service" and group in CORE_GROUPS:
            service = self.kubernetes_service(namespace, name)
        elif kind == "ServiceEntry" and group == ISTIO_NETWORKING_GROUP:
            service = next(
                (s for s in self.services.values() if s.namespace == namespace and s.name == name),
                None,
            )
        elif kind == "Hostname" and group == ISTIO_NETWORKING_GROUP:
            service = self.service_by_host(name, namespace)
        else:
            return unresolved, f"backend kind {group or 'core'}/{kind} is not supported"
        if service is None:
            return unresolved, f"backend {kind} {namespace}/{name} not found"
        if port is None:
            return unresolved, f"backend {kind} {namespace}/{name} needs a port"
        return Backend(service.key, port, weight), None

    def _gateway_backends(
        self, route: Resource, rule: Mapping[str, Any], where: str
    ) -> list[Backend]:
        backends: list[Backend] = []
        for i, ref in enumerate(rule.get("backendRefs") or ()):
            at = f"{where}.backendRefs[{i}]"
            if ref.get("weight", 1) == 0:
                continue
            backend, problem = self._backend_ref(route, ref)
            if problem is not None:
                self.warn(route, at, f"{problem}: its share of the requests gets 500")
            request = response = HeaderOps()
            for k, f in enumerate(ref.get("filters") or ()):
                kind = f["type"]
                if kind == "RequestHeaderModifier":
                    request = _header_ops(f.get("requestHeaderModifier"), listed=True)
                elif kind == "ResponseHeaderModifier":
                    response = _header_ops(f.get("responseHeaderModifier"), listed=True)
                else:
                    self.warn(
                        route,
                        f"{at}.filters[{k}]",
                        f"backend filter {kind} is not supported (only header modifiers): "
                        "this backend's share of the requests gets 500",
                    )
                    backend = Backend(f"{route.namespace}/", backend.port, backend.weight)
            backends.append(
                dataclasses.replace(backend, request_headers=request, response_headers=response)
            )
        return backends

    def _gateway_timeouts(
        self, route: Resource, rule: Mapping[str, Any], where: str
    ) -> tuple[float | None, RetryPolicy | None]:
        timeouts = rule.get("timeouts") or {}
        # "0s" means no timeout
        request = parse_duration(timeouts.get("request")) or None
        backend = parse_duration(timeouts.get("backendRequest")) or None
        retry = rule.get("retry")
        if retry is None:
            return backend or request, None
        codes = tuple(retry.get("codes") or ())
        if retry.get("backoff"):
            self.warn(route, f"{where}.retry.backoff", "retry backoff is not supported")
        return request, RetryPolicy(
            attempts=retry.get("attempts", 2),
            per_try_timeout=backend,
            retry_on=GATEWAY_RETRY_ON + ((RETRIABLE_STATUS_CODES,) if codes else ()),
            retriable_status_codes=codes,
        )

    # --- VirtualService ------------------------------------------------------------------------

    def virtual_service_routes(self, vs: Resource, target: Service) -> list[Route]:
        """The `http` routes of a VirtualService, as a waypoint serving `target` applies them."""
        out: list[Route] = []
        http = vs.spec.get("http") or []
        for i, entry in enumerate(http):
            where = f"spec.http[{i}]"
            if entry.get("delegate"):
                self.warn(vs, f"{where}.delegate", "delegation is not supported: route left out")
                continue
            entries = entry.get("match") or []
            matches = [
                m
                for j, e in enumerate(entries)
                if (m := self._vs_match(vs, e, f"{where}.match[{j}]")) is not None
            ]
            if entries and not matches:
                continue
            route = self._vs_route(vs, entry, i, where, tuple(matches) or (RouteMatch(),))
            if route is not None:
                out.extend(self._fill_ports(route, target))
            if not entries:
                if i + 1 < len(http):
                    self.warn(
                        vs,
                        f"spec.http[{i + 1}]",
                        f"unreachable: route {i} has no match and takes every request",
                    )
                break
        return out

    def _string_match(self, sm: Mapping[str, Any]) -> tuple[MatchKind, str]:
        for key, kind in (("exact", MatchKind.EXACT), ("prefix", MatchKind.PREFIX)):
            if key in sm:
                return kind, sm[key]
        if "regex" in sm:
            return MatchKind.REGEX, sm["regex"]
        return MatchKind.PRESENT, ""

    def _vs_match(self, vs: Resource, m: Mapping[str, Any], where: str) -> RouteMatch | None:
        gateways = m.get("gateways")
        if gateways and MESH_GATEWAY not in gateways:
            return None
        for key in ("sourceLabels", "sourceNamespace"):
            if m.get(key):
                self.warn(vs, f"{where}.{key}", "dropped at waypoints (istiod does the same)")
        if m.get("scheme"):
            self.warn(vs, f"{where}.scheme", "scheme matches are not supported: entry left out")
            return None
        method = None
        if m.get("method"):
            kind, method = self._string_match(m["method"])
            if kind is not MatchKind.EXACT:
                self.warn(
                    vs,
                    f"{where}.method",
                    "only exact method matches are supported: entry left out",
                )
                return None
        try:
            path = None
            if m.get("uri"):
                kind, value = self._string_match(m["uri"])
                if kind is not MatchKind.PRESENT:
                    ignore = bool(m.get("ignoreUriCase")) and kind is not MatchKind.REGEX
                    path = PathMatch(kind, value, segment_prefix=False, ignore_case=ignore)
            headers = [
                HeaderMatch(name, *self._string_match(sm or {}))
                for name, sm in (m.get("headers") or {}).items()
            ]
            headers += [
                HeaderMatch(name, *self._string_match(sm or {}), invert=True)
                for name, sm in (m.get("withoutHeaders") or {}).items()
            ]
            if m.get("authority"):
                headers.append(HeaderMatch(":authority", *self._string_match(m["authority"])))
            query = [
                QueryMatch(name, *self._string_match(sm or {}))
                for name, sm in (m.get("queryParams") or {}).items()
            ]
        except ValueError as e:
            self.warn(vs, where, f"{e}: entry left out")
            return None
        return RouteMatch(
            path=path,
            method=method,
            headers=tuple(headers),
            query=tuple(query),
            port=m.get("port"),
        )

    def _destination(
        self, vs: Resource, d: Mapping[str, Any], where: str, weight: int = 1
    ) -> Backend:
        host = resolve_host(d["host"], vs.namespace, self.domain_suffix)
        service = self.service_by_host(host, vs.namespace)
        if service is None:
            self.warn(
                vs,
                f"{where}.host",
                f"no service has host {host}: requests routed there get 503",
            )
        port = (d.get("port") or {}).get("number")
        if port is None and service is not None and len(service.ports) == 1:
            port = next(iter(service.ports))
        key = service.key if service is not None else f"{vs.namespace}/{host}"
        return Backend(key, port or _REQUEST_PORT, weight, d.get("subset", ""))

    def _vs_route(
        self,
        vs: Resource,
        entry: Mapping[str, Any],
        index: int,
        where: str,
        matches: tuple[RouteMatch, ...],
    ) -> Route | None:
        headers = entry.get("headers") or {}
        backends: list[Backend] = []
        destinations = entry.get("route") or []
        for k, d in enumerate(destinations):
            weight = d.get("weight", 0) if len(destinations) > 1 else 1
            if weight == 0:
                continue
            backend = self._destination(
                vs, d["destination"], f"{where}.route[{k}].destination", weight
            )
            ops = d.get("headers") or {}
            backends.append(
                dataclasses.replace(
                    backend,
                    request_headers=_header_ops(ops.get("request"), listed=False),
                    response_headers=_header_ops(ops.get("response"), listed=False),
                )
            )
        redirect = self._vs_redirect(vs, entry.get("redirect"), f"{where}.redirect")
        direct = self._vs_direct_response(entry.get("directResponse"))
        if destinations and not backends and redirect is None and direct is None:
            self.warn(vs, f"{where}.route", "every destination has weight 0: requests get 500")
            direct = DirectResponse(500)
        if not backends and redirect is None and direct is None:
            self.warn(vs, where, "no route, redirect or directResponse: route left out")
            return None
        if entry.get("corsPolicy"):
            self.warn(vs, f"{where}.corsPolicy", "CORS is not supported by waypoints: ignored")
        return Route(
            name=entry.get("name") or f"{vs.namespace}.{vs.name}.{index}",
            matches=matches,
            backends=tuple(backends),
            redirect=redirect,
            direct_response=direct,
            rewrite=self._vs_rewrite(vs, entry.get("rewrite"), f"{where}.rewrite"),
            request_headers=_header_ops(headers.get("request"), listed=False),
            response_headers=_header_ops(headers.get("response"), listed=False),
            timeout=parse_duration(entry.get("timeout")) or None,
            retries=self._vs_retries(vs, entry.get("retries"), f"{where}.retries"),
            mirrors=tuple(self._vs_mirrors(vs, entry, where)),
            fault=self._vs_fault(vs, entry.get("fault"), f"{where}.fault"),
            origin=f"VirtualService {vs.namespace}/{vs.name} http[{index}]",
        )

    def _vs_redirect(
        self, vs: Resource, r: Mapping[str, Any] | None, where: str
    ) -> Redirect | None:
        if not r:
            return None
        if r.get("derivePort") == "FROM_PROTOCOL_DEFAULT":
            self.warn(vs, f"{where}.derivePort", "FROM_PROTOCOL_DEFAULT is not supported")
        return Redirect(
            status=r.get("redirectCode", 301),
            scheme=r.get("scheme"),
            host=r.get("authority"),
            port=r.get("port"),
            path=r.get("uri"),
        )

    @staticmethod
    def _vs_direct_response(d: Mapping[str, Any] | None) -> DirectResponse | None:
        if not d:
            return None
        body = d.get("body") or {}
        text = body.get("string", "")
        if "bytes" in body:
            text = base64.b64decode(body["bytes"]).decode()
        return DirectResponse(d["status"], text)

    def _vs_rewrite(self, vs: Resource, r: Mapping[str, Any] | None, where: str) -> Rewrite | None:
        if not r:
            return None
        path = None
        regex = r.get("uriRegexRewrite")
        if regex:
            rewrite = regex["rewrite"]
            if regex["match"] in _WHOLE_PATH_PATTERNS and "\\" not in rewrite:
                path = rewrite
            else:
                self.warn(
                    vs,
                    f"{where}.uriRegexRewrite",
                    "only a rewrite of the whole path (match '/.*') is supported: not applied",
                )
        prefix = r.get("uri") or None
        if path is None and prefix is None and not r.get("authority"):
            return None
        return Rewrite(path=path, prefix=prefix, authority=r.get("authority"))

    def _vs_retries(
        self, vs: Resource, r: Mapping[str, Any] | None, where: str
    ) -> RetryPolicy | None:
        if r is None:
            return None
        attempts = r.get("attempts", 0)
        if attempts <= 0:
            return RetryPolicy(attempts=0)
        retry_on: list[str] = []
        codes: list[int] = []
        if r.get("retryOn"):
            for part in filter(None, (p.strip() for p in r["retryOn"].split(","))):
                if part.isdigit():
                    codes.append(int(part))
                elif part not in retry_on:
                    retry_on.append(part)
            if codes and RETRIABLE_STATUS_CODES not in retry_on:
                retry_on.append(RETRIABLE_STATUS_CODES)
        else:
            retry_on, codes = list(DEFAULT_RETRY_ON), list(DEFAULT_RETRIABLE_CODES)
        for key in ("backoff", "retryRemoteLocalities"):
            if key in r:
                self.warn(vs, f"{where}.{key}", "not supported by waypoints: ignored")
        return RetryPolicy(
            attempts=attempts,
            per_try_timeout=parse_duration(r.get("perTryTimeout")) or None,
            retry_on=tuple(retry_on),
            retriable_status_codes=tuple(codes),
        )

    def _percent(self, vs: Resource, spec: Mapping[str, Any], where: str) -> float:
        percentage = spec.get("percentage")
        if percentage is not None:
            return float(percentage.get("value", 0))
        if "percent" in spec:
            return float(spec["percent"])
        self.warn(vs, where, "no percentage: no request is affected")
        return 0.0

    def _vs_fault(self, vs: Resource, f: Mapping[str, Any] | None, where: str) -> Fault | None:
        if not f:
            return None
        delay_percent = delay = abort_percent = 0.0
        abort_status = abort_grpc = 0
        d = f.get("delay")
        if d:
            if "fixedDelay" in d:
                delay = parse_duration(d["fixedDelay"]) or 0.0
                delay_percent = self._percent(vs, d, f"{where}.delay")
            else:
                self.warn(vs, f"{where}.delay", "only fixedDelay is supported: no delay")
        a = f.get("abort")
        if a:
            if "httpStatus" in a:
                abort_status = a["httpStatus"]
            elif "grpcStatus" in a:
                status = a["grpcStatus"]
                code = int(status) if status.isdigit() else GRPC_STATUS.get(status.upper())
                if code is None or not 1 <= code <= 16:
                    self.warn(vs, f"{where}.abort.grpcStatus", f"{status!r}: not a gRPC error")
                else:
                    abort_grpc = code
            else:
                self.warn(vs, f"{where}.abort", "only httpStatus and grpcStatus are supported")
            if abort_status or abort_grpc:
                abort_percent = self._percent(vs, a, f"{where}.abort")
        if not (delay and delay_percent) and not abort_percent:
            return None
        return Fault(delay_percent, delay, abort_percent, abort_status, abort_grpc)

    def _vs_mirrors(self, vs: Resource, entry: Mapping[str, Any], where: str) -> list[Mirror]:
        out = []
        if entry.get("mirror"):
            percent = 100.0
            if "mirrorPercentage" in entry:
                percent = self._percent(vs, {"percentage": entry["mirrorPercentage"]}, where)
            out.append(Mirror(self._destination(vs, entry["mirror"], f"{where}.mirror"), percent))
        for k, m in enumerate(entry.get("mirrors") or ()):
            at = f"{where}.mirrors[{k}]"
            percent = self._percent(vs, m, at) if "percentage" in m else 100.0
            out.append(
                Mirror(self._destination(vs, m["destination"], f"{at}.destination"), percent)
            )
        return out

    def _fill_ports(self, route: Route, target: Service) -> list[Route]:
        """Give destinations without a port the port the request arrived on: known when the
        served service has one port, else one copy of the route per port."""
        if all(b.port != _REQUEST_PORT for b in _route_backends(route)):
            return [route]
        out = []
        for port in sorted(target.ports):
            matches = tuple(
                dataclasses.replace(m, port=port) for m in route.matches if m.port in (None, port)
            )
            if not matches:
                continue

            def fill(b: Backend, port: int = port) -> Backend:
                return dataclasses.replace(b, port=port) if b.port == _REQUEST_PORT else b

            out.append(
                dataclasses.replace(
                    route,
                    matches=matches if len(target.ports) > 1 else route.matches,
                    backends=tuple(fill(b) for b in route.backends),
                    mirrors=tuple(
                        dataclasses.replace(m, backend=fill(m.backend)) for m in route.mirrors
                    ),
                )
            )
        return out


def _path_modifier(path: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(full path, prefix replacement) of a Gateway API HTTPPathModifier."""
    if not path:
        return None, None
    if path.get("type") == "ReplaceFullPath":
        return path.get("replaceFullPath", "/"), None
    return None, (path.get("replacePrefixMatch") or "/").rstrip("/") or "/"


def _gateway_redirect(r: Mapping[str, Any]) -> Redirect:
    full, prefix = _path_modifier(r.get("path"))
    return Redirect(
        status=r.get("statusCode", 302),
        scheme=r.get("scheme"),
        host=r.get("hostname"),
        port=r.get("port"),
        path=full,
        prefix=prefix,
    )


def _gateway_rewrite(r: Mapping[str, Any]) -> Rewrite:
    full, prefix = _path_modifier(r.get("path"))
    return Rewrite(path=full, prefix=prefix, authority=r.get("hostname"))


def _route_backends(route: Route) -> Iterable[Backend]:
    yield from route.backends
    for m in route.mirrors:
        yield m.backend


def route_backends(routes: Iterable[Route]) -> list[Backend]:
    """Every backend and mirror backend the routes use."""
    return [b for r in routes for b in _route_backends(r)]


def _precedence(route: Route) -> tuple[int, int, int, int, int]:
    """istiod's sortHTTPRoutes key over a split route's single match (smaller sorts first)."""
    m = route.matches[0]
    path = m.path
    rank = {MatchKind.EXACT: 3, MatchKind.PREFIX: 2, MatchKind.REGEX: 1}.get(
        path.kind if path is not None else MatchKind.PRESENT, -1
    )
    length = len(path.value) if path is not None else 0
    return (-rank, -length, 0 if m.method else 1, -len(m.headers), -len(m.query))


def sort_gateway_routes(routes: Sequence[Route]) -> list[Route]:
    """Gateway API precedence over routes already in creation order (a stable sort)."""
    return sorted(routes, key=_precedence)


class SubsetIndex:
    """DestinationRule subsets by host, looked up as a waypoint proxy sees them: a rule in the
    waypoint's namespace first, then in the service's, then in the root namespace, then
    anywhere; an exact host before a wildcard; the oldest rule first."""

    def __init__(self, rules: Iterable[Resource], domain_suffix: str, root_namespace: str) -> None:
        self.root_namespace = root_namespace
        self.rules = [
            (resolve_host(r.spec["host"], r.namespace, domain_suffix), r)
            for r in sorted(rules, key=creation_order)
        ]

    def rule_for(self, service: Service, waypoint_namespace: str) -> Resource | None:
        def rank(item: tuple[str, Resource]) -> tuple[int, int]:
            host, rule = item
            if rule.namespace == waypoint_namespace:
                scope = 0
            elif rule.namespace == service.namespace:
                scope = 1
            elif rule.namespace == self.root_namespace:
                scope = 2
            else:
                scope = 3
            return scope, 0 if host == service.hostname else 1

        found = [item for item in self.rules if host_matches(item[0], service.hostname)]
        return min(found, key=rank)[1] if found else None

    def subset_labels(
        self, service: Service, name: str, waypoint_namespace: str
    ) -> Mapping[str, str] | None:
        rule = self.rule_for(service, waypoint_namespace)
        for subset in (rule.spec.get("subsets") or ()) if rule is not None else ():
            if subset["name"] == name:
                labels: Mapping[str, str] = subset.get("labels") or {}
                return labels
        return None
