"""RequestAuthentication in the control plane: validation (file and field), attachment to
waypoints, the JWT rules sent to them, and the JWKS resolver fetching real documents from an
HTTP server on loopback (found by URL or through a Service's endpoints, by OpenID discovery,
refreshed on rotation, failing closed when it cannot be had)."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.unit.cp_support import diagnostics, store_with, yaml_text
from tests.unit.waypoint_support import (
    documents,
    namespace,
    pod,
    service,
    translation,
    warnings,
    waypoint,
)
from ztunnel_py.controlplane.jwks import JwksResolver, JwksResult
from ztunnel_py.controlplane.sources.yamldocs import parse_documents
from ztunnel_py.controlplane.store import ConfigStore
from ztunnel_py.controlplane.translate import translate
from ztunnel_py.controlplane.translate.l7authn import OFFLINE
from ztunnel_py.model.authn import ClaimToHeader, JwtHeader, JwtRule, WaypointAuthentication

ECHO = "apps/echo.apps.svc.cluster.local"
GATEWAY_REF = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}
SERVICE_REF = {"group": "", "kind": "Service", "name": "echo"}
ISSUER = "https://issuer.example"


def key_set(kid: str) -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return json.dumps({"keys": [{**ECAlgorithm.to_jwk(public, as_dict=True), "kid": kid}]})


KEYS = key_set("k1")


def authn(
    name: str = "jwt",
    ns: str = "apps",
    targets: list[dict[str, Any]] | None = None,
    **rule: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "targetRefs": targets if targets is not None else [GATEWAY_REF],
            "jwtRules": [{"issuer": ISSUER, **rule}],
        },
    }


def mesh() -> str:
    return (
        documents(
            namespace("apps", **{"istio.io/use-waypoint": "waypoint"}),
            namespace("istio-system"),
            service("echo"),
            service("other", ip="10.96.0.20"),
            pod("echo-0", labels={"app": "echo"}),
        )
        + "---\n"
        + waypoint()
    )


# --- validation ---------------------------------------------------------------------------------


def problems(spec: str) -> list[str]:
    text = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: jwt, namespace: apps}}\nspec:\n{textwrap.indent(yaml_text(spec), '  ')}"
    )
    return [f"{d.path}: {d.reason}" for d in diagnostics(text)]


def test_a_valid_request_authentication_has_no_problems() -> None:
    spec = f"""
      targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
      jwtRules:
      - issuer: {ISSUER}
        audiences: [echo]
        jwks: '{KEYS}'
        fromHeaders: [{{name: x-token, prefix: "Token "}}]
        fromParams: [jwt]
        fromCookies: [session]
        outputPayloadToHeader: x-jwt-payload
        outputClaimToHeaders: [{{header: x-group, claim: groups}}]
        forwardOriginalToken: true
        timeout: 2s
      - issuer: other
        jwksUri: https://keys.example:8443/jwks.json
    """
    assert problems(spec) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules: [{audiences: [a]}]",
            "spec.jwtRules[0].issuer: required field is missing",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules: [{issuer: a, jwksUri: ftp://x/k}]",
            "spec.jwtRules[0].jwksUri: invalid jwksUri 'ftp://x/k': the scheme must be http or "
            "https",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\n"
            "jwtRules: [{issuer: a, jwks: '{\"keys\": 1}'}]",
            "spec.jwtRules[0].jwks: jwks parse error: [keys] in Jwks is not an array",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules: [{issuer: a, jwks: 'not json'}]",
            "spec.jwtRules[0].jwks: jwks parse error: Jwks is an invalid JSON",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\n"
            "jwtRules: [{issuer: a, outputPayloadToHeader: 'x jwt'}]",
            "spec.jwtRules[0].outputPayloadToHeader: 'x jwt' is not a valid HTTP header name "
            "(letters, digits, '-' and '_')",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules:\n- issuer: a\n"
            "  outputClaimToHeaders: [{header: x-a, claim: a}, {header: X-A, claim: b}]",
            "spec.jwtRules[0].outputClaimToHeaders[1]: duplicate header 'x-a' (same as [0])",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules: [{issuer: a, fromHeaders: [{}]}]",
            "spec.jwtRules[0].fromHeaders[0].name: required field is missing",
        ),
        (
            "targetRefs: [{kind: Gateway, name: w}]\njwtRules: [{issuer: a, timeout: soon}]",
            "spec.jwtRules[0].timeout: 'soon' is not a positive duration (e.g. 5s, 500ms)",
        ),
        (
            "selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Gateway, name: w}]",
            "spec.selector: selector and targetRef(s) are mutually exclusive",
        ),
    ],
)
def test_invalid_request_authentications_are_rejected_naming_the_field(
    spec: str, expected: str
) -> None:
    assert expected in problems(spec)


def test_without_targets_nothing_applies_it_and_validation_says_so() -> None:
    found = problems(f"selector: {{matchLabels: {{app: a}}}}\njwtRules: [{{issuer: {ISSUER}}}]")
    assert found == [
        "spec: not applied: ztunnel cannot verify JWTs, and waypoints only apply "
        "RequestAuthentications that target them (targetRefs to their Gateway or a Service "
        "they serve)"
    ]
    both = problems(f"jwtRules: [{{issuer: a, jwks: '{KEYS}', jwksUri: 'http://k/'}}]")
    assert "spec.jwtRules[0].jwksUri: ignored: the inline jwks is used" in both


# --- translation --------------------------------------------------------------------------------


def authentications(
    *objects: dict[str, Any],
) -> tuple[dict[str, WaypointAuthentication], list[str]]:
    t, found = translation(mesh(), documents(*objects))
    return dict(t.waypoints["apps/waypoint"].authentications), warnings(found)


def test_rules_with_inline_keys_go_to_the_waypoint_they_target() -> None:
    found, problems_ = authentications(
        authn(
            jwks=KEYS,
            audiences=["echo"],
            fromHeaders=[{"name": "X-Token", "prefix": "Token "}],
            outputClaimToHeaders=[{"header": "X-Group", "claim": "groups"}],
            spaceDelimitedClaims=["roles"],
        ),
        authn("per-service", targets=[SERVICE_REF], jwks=KEYS),
    )
    assert problems_ == []
    assert found["apps/jwt"] == WaypointAuthentication(
        "jwt",
        "apps",
        (
            JwtRule(
                ISSUER,
                audiences=("echo",),
                jwks=KEYS,
                from_headers=(JwtHeader("x-token", "Token "),),
                output_claim_to_headers=(ClaimToHeader("x-group", "groups"),),
                space_delimited_claims=("permission", "roles", "scope"),
                origin="RequestAuthentication apps/jwt",
            ),
        ),
    )
    assert found["apps/per-service"].services == (ECHO,)


def test_offline_translation_leaves_remote_keys_unfetched() -> None:
    found, problems_ = authentications(authn(jwksUri="http://127.0.0.1:9/keys"))
    (rule,) = found["apps/jwt"].rules
    assert (rule.jwks, rule.jwks_error) == ("", OFFLINE)
    assert problems_ == []


def test_a_request_authentication_for_a_service_without_waypoint_is_reported() -> None:
    _, problems_ = authentications(authn(targets=[{"kind": "Service", "name": "nope"}], jwks=KEYS))
    assert problems_ == ["spec.targetRefs[0]: Service apps/nope not found"]


# --- the JWKS resolver, against a real HTTP server ----------------------------------------------


class Documents:
    """Paths served by the test server: path -> (status, body)."""

    def __init__(self) -> None:
        self.by_path: dict[str, tuple[int, str]] = {}
        self.requests: list[str] = []


@pytest.fixture
def served() -> Iterator[tuple[Documents, int]]:
    docs = Documents()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            docs.requests.append(f"{self.headers['Host']}{self.path}")
            status, body = docs.by_path.get(self.path, (404, "not found"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield docs, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_fetched_once_and_cached(served: tuple[Documents, int]) -> None:
    docs, port = served
    docs.by_path["/keys"] = (200, KEYS)
    resolver = JwksResolver()
    uri = f"http://127.0.0.1:{port}/keys"
    assert resolver.resolve(ISSUER, uri) == JwksResult(keys=KEYS)
    assert resolver.resolve(ISSUER, uri) == JwksResult(keys=KEYS)
    assert docs.requests == [f"127.0.0.1:{port}/keys"]


def test_openid_discovery_finds_the_jwks_uri(served: tuple[Documents, int]) -> None:
    docs, port = served
    issuer = f"http://127.0.0.1:{port}/realm"
    docs.by_path["/realm/.well-known/openid-configuration"] = (
        200,
        json.dumps({"issuer": issuer, "jwks_uri": f"http://127.0.0.1:{port}/certs"}),
    )
    docs.by_path["/certs"] = (200, KEYS)
    assert JwksResolver().resolve(issuer, "") == JwksResult(keys=KEYS)


def test_failures_are_reasons_not_keys(served: tuple[Documents, int]) -> None:
    docs, port = served
    docs.by_path["/garbage"] = (200, '{"keys": "none"}')
    resolver = JwksResolver()
    missing = resolver.resolve(ISSUER, f"http://127.0.0.1:{port}/missing")
    assert missing.keys == "" and "status 404" in missing.error
    garbage = resolver.resolve(ISSUER, f"http://127.0.0.1:{port}/garbage")
    assert garbage.error.endswith("jwks parse error: [keys] in Jwks is not an array")
    # A port nobody listens on: refused at once, within the timeout either way.
    closed = resolver.resolve(ISSUER, "http://127.0.0.1:9/keys", timeout=1.0)
    assert "cannot fetch the keys of issuer" in closed.error


def test_a_rotation_is_picked_up_by_the_refresh(served: tuple[Documents, int]) -> None:
    docs, port = served
    docs.by_path["/keys"] = (200, KEYS)
    clock = Clock()
    resolver = JwksResolver(refresh_interval=60.0, clock=clock)
    uri = f"http://127.0.0.1:{port}/keys"
    resolver.resolve(ISSUER, uri)
    rotated = key_set("k2")
    docs.by_path["/keys"] = (200, rotated)
    assert resolver.refresh_due() is False  # not due yet
    clock.now += 61
    assert resolver.refresh_due() is True
    assert resolver.resolve(ISSUER, uri) == JwksResult(keys=rotated)
    # The server goes away: the last good keys stay.
    del docs.by_path["/keys"]
    clock.now += 61
    assert resolver.refresh_due() is False
    assert resolver.resolve(ISSUER, uri) == JwksResult(keys=rotated)


def test_a_failed_fetch_is_retried_with_backoff_and_recovers(
    served: tuple[Documents, int],
) -> None:
    docs, port = served
    clock = Clock()
    resolver = JwksResolver(clock=clock)
    uri = f"http://127.0.0.1:{port}/keys"
    assert resolver.resolve(ISSUER, uri).error
    docs.by_path["/keys"] = (200, KEYS)
    assert resolver.refresh_due() is False  # the first retry is 1 s away
    clock.now += 1
    assert resolver.refresh_due() is True
    assert resolver.resolve(ISSUER, uri) == JwksResult(keys=KEYS)
    assert len(docs.requests) == 2


def test_unused_key_sets_are_dropped(served: tuple[Documents, int]) -> None:
    docs, port = served
    docs.by_path["/keys"] = (200, KEYS)
    clock = Clock()
    resolver = JwksResolver(eviction=100.0, refresh_interval=1000.0, clock=clock)
    resolver.resolve(ISSUER, f"http://127.0.0.1:{port}/keys")
    clock.now += 100
    resolver.refresh_due()
    assert resolver.describe() == []


def test_a_service_hostname_resolves_to_its_endpoints(served: tuple[Documents, int]) -> None:
    """The control plane has no cluster DNS: `jwks.auth.svc.cluster.local` is dialled at the
    Service's endpoints (here a pod on loopback), on its target port."""
    docs, port = served
    docs.by_path["/keys"] = (200, KEYS)
    jwks_service = service(
        "jwks",
        "auth",
        ip="10.96.0.30",
        ports=[{"name": "http", "port": 80, "targetPort": port}],
    )
    config = documents(
        namespace("auth"),
        jwks_service,
        pod("jwks-0", "auth", ip="127.0.0.1", labels={"app": "jwks"}),
        authn(jwksUri="http://jwks.auth.svc.cluster.local/keys"),
    )
    resolver = JwksResolver()
    store = ConfigStore(report=False, keys=resolver)
    store.apply({"f.yaml": parse_documents(mesh() + "---\n" + config, "f.yaml")})
    scope = store.current().waypoints["apps/waypoint"]
    (rule,) = scope.authentications["apps/jwt"].rules
    assert (rule.jwks, rule.jwks_error) == (KEYS, "")
    assert docs.requests == ["jwks.auth.svc.cluster.local/keys"]


def test_the_store_sends_rotated_keys_and_reports_failures(served: tuple[Documents, int]) -> None:
    docs, port = served
    clock = Clock()
    resolver = JwksResolver(refresh_interval=60.0, clock=clock)
    store = ConfigStore(report=False, keys=resolver)
    resolver.on_change = store.refresh
    uri = f"http://127.0.0.1:{port}/keys"
    store.apply({"f.yaml": parse_documents(mesh() + "---\n" + documents(authn(jwksUri=uri)), "f")})

    def rule() -> JwtRule:
        (only,) = store.current().waypoints["apps/waypoint"].authentications["apps/jwt"].rules
        return only

    # Not served yet: the rule carries the reason, and the resource a warning naming the field.
    assert rule().jwks == "" and "status 404" in rule().jwks_error
    warned = [f"{d.path}: {d.reason}" for d in store.diagnostics() if not d.is_error]
    assert any(
        w.startswith("spec.jwtRules[0].jwksUri: cannot fetch the keys of issuer")
        and w.endswith("waypoints reject every token of this issuer until the keys can be fetched")
        for w in warned
    ), warned
    docs.by_path["/keys"] = (200, KEYS)
    version = store.current().version
    clock.now += 1
    assert resolver.refresh_due() is True
    resolver.on_change()
    assert store.current().version == version + 1
    assert (rule().jwks, rule().jwks_error) == (KEYS, "")
    assert not any("jwksUri" in d.path for d in store.diagnostics())


def test_validate_style_translation_needs_no_resolver() -> None:
    store = store_with(("f.yaml", mesh() + "---\n" + documents(authn(jwks=KEYS))))
    t = translate(store.resources().values())
    assert t.waypoints["apps/waypoint"].authentications["apps/jwt"].rules[0].jwks == KEYS
