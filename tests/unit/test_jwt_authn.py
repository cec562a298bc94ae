"""End-user authentication without sockets: tokens signed with real RSA and EC test keys run
through the JWT filter as a waypoint runs it, and the answers compared with Envoy's (status,
body, `www-authenticate`, response code details), then the verified payload driving the same
authorization evaluator the waypoint uses."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt as pyjwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ztunnel_py.http.filter import Downstream, LocalReply, RequestContext
from ztunnel_py.http.filters.authz import AuthorizationFilter
from ztunnel_py.http.filters.jwt import JwtAuthnFilter
from ztunnel_py.http.message import Headers, RequestHead
from ztunnel_py.identity.jwt import JwtError, JwtStatus, parse_jwks, parse_token
from ztunnel_py.model import Action, Authorization, Identity, Match, PolicyScope, StringMatch
from ztunnel_py.model import StringMatchKind as K
from ztunnel_py.model.authn import ClaimToHeader, JwtHeader, JwtRule
from ztunnel_py.model.policy import ClaimCondition, RequestPrincipalMatch
from ztunnel_py.policy.rbac import PolicySet

ISSUER = "https://issuer.example"
OTHER_ISSUER = "other@example.com"
NOW = 1_700_000_000

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WRONG_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    out: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**out, "kid": kid}


JWKS = json.dumps({"keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]})


def token(
    key: Any = RSA_KEY,
    kid: str | None = "rsa-1",
    alg: str = "RS256",
    **claims: Any,
) -> str:
    payload = {"iss": ISSUER, "sub": "alice", "exp": NOW + 3600, "iat": NOW, **claims}
    headers = {"kid": kid} if kid is not None else {}
    return pyjwt.encode(payload, key, algorithm=alg, headers=headers)


def rule(**fields: Any) -> JwtRule:
    defaults: dict[str, Any] = {"issuer": ISSUER, "jwks": JWKS}
    return JwtRule(**{**defaults, **fields})


def request(path: str = "/api", method: str = "GET", **headers: str) -> RequestContext:
    fields = Headers((name.replace("_", "-"), value) for name, value in headers.items())
    head = RequestHead(method, path, "echo.apps:80", fields)
    web = Identity("cluster.local", "apps", "web")
    return RequestContext(head, Downstream(web, "10.244.1.11:40000", "10.96.0.10:80"))


def bearer(text: str) -> dict[str, str]:
    return {"authorization": f"Bearer {text}"}


async def authenticate(ctx: RequestContext, *rules: JwtRule, now: float = NOW) -> LocalReply | None:
    f = JwtAuthnFilter(lambda _ctx: rules, clock=lambda: now)
    return await f.on_request_headers(ctx)


async def rejected(ctx: RequestContext, *rules: JwtRule, now: float = NOW) -> LocalReply:
    reply = await authenticate(ctx, *rules, now=now)
    assert reply is not None
    return reply


# --- accepted tokens ---------------------------------------------------------------------------


async def test_an_rsa_signed_token_is_accepted_and_becomes_the_request_principal() -> None:
    ctx = request(**bearer(token(groups=["admin", "dev"], scope="read write")))
    assert await authenticate(ctx, rule()) is None
    payload = ctx.jwt_payload
    assert payload is not None
    assert (payload["iss"], payload["sub"]) == (ISSUER, "alice")
    # Envoy splits `scope` (and `permission`) at spaces for policies.
    assert payload["scope"] == ["read", "write"]
    # Not forwarded by default: the header it came in is removed.
    assert "authorization" not in ctx.request.headers


async def test_an_ec_signed_token_is_accepted() -> None:
    ctx = request(**bearer(token(EC_KEY, kid="ec-1", alg="ES256")))
    assert await authenticate(ctx, rule()) is None
    assert ctx.jwt_payload is not None and ctx.jwt_payload["sub"] == "alice"


async def test_a_token_without_kid_is_tried_with_every_key() -> None:
    ctx = request(**bearer(token(EC_KEY, kid=None, alg="ES256")))
    assert await authenticate(ctx, rule()) is None


async def test_a_request_without_a_token_passes_anonymous() -> None:
    ctx = request()
    assert await authenticate(ctx, rule()) is None
    assert ctx.jwt_payload is None


async def test_without_rules_tokens_are_not_looked_at() -> None:
    ctx = request(**bearer("garbage"))
    assert await authenticate(ctx) is None
    assert ctx.request.headers.get("authorization") == "Bearer garbage"


async def test_forward_original_token_keeps_the_header() -> None:
    text = token()
    ctx = request(**bearer(text))
    assert await authenticate(ctx, rule(forward_original_token=True)) is None
    assert ctx.request.headers.get("authorization") == f"Bearer {text}"


async def test_the_payload_and_claims_go_to_headers_replacing_what_the_client_sent() -> None:
    text = token(group={"name": "admin", "level": 3}, n=5, ok=True)
    ctx = request(**bearer(text), x_jwt_payload="forged", x_group="forged")
    configured = rule(
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(
            ClaimToHeader("x-sub", "sub"),
            ClaimToHeader("x-group", "group.name"),
            ClaimToHeader("x-n", "n"),
            ClaimToHeader("x-ok", "ok"),
            ClaimToHeader("x-whole", "group"),
            ClaimToHeader("x-missing", "nope"),
        ),
    )
    assert await authenticate(ctx, configured) is None
    headers = ctx.request.headers
    assert headers.get_all("x-jwt-payload") == [text.split(".")[1]]
    decoded = json.loads(base64.urlsafe_b64decode(text.split(".")[1] + "=="))
    assert decoded["sub"] == "alice"
    assert headers.get_all("x-group") == ["admin"]
    assert (headers.get("x-sub"), headers.get("x-n"), headers.get("x-ok")) == ("alice", "5", "true")
    assert json.loads(base64.b64decode(headers.get("x-whole") or "")) == {
        "name": "admin",
        "level": 3,
    }
    assert "x-missing" not in headers


async def test_custom_locations_header_prefix_parameter_and_cookie() -> None:
    text = token()
    by_header = rule(from_headers=(JwtHeader("x-token", "Token "),))
    ctx = request(x_token=f"Token {text}")
    assert await authenticate(ctx, by_header) is None
    assert "x-token" not in ctx.request.headers
    # The default location is not looked at any more.
    ctx = request(**bearer("not-a-token"))
    assert await authenticate(ctx, by_header) is None and ctx.jwt_payload is None

    by_param = rule(from_params=("jwt",))
    ctx = request(path=f"/api?x=1&jwt={text}")
    assert await authenticate(ctx, by_param) is None
    assert ctx.jwt_payload is not None

    by_cookie = rule(from_cookies=("session",))
    ctx = request(cookie=f"theme=dark; session={text}")
    assert await authenticate(ctx, by_cookie) is None
    assert ctx.jwt_payload is not None
    # Envoy leaves tokens in parameters and cookies where they are.
    assert text in (ctx.request.headers.get("cookie") or "")


async def test_the_access_token_parameter_is_a_default_location() -> None:
    ctx = request(path=f"/api?access_token={token()}")
    assert await authenticate(ctx, rule()) is None
    assert ctx.jwt_payload is not None


async def test_a_cors_preflight_is_not_checked() -> None:
    ctx = request(method="OPTIONS", origin="https://app", access_control_request_method="DELETE")
    ctx.request.headers.add("authorization", "Bearer garbage")
    assert await authenticate(ctx, rule()) is None


async def test_with_two_issuers_each_token_finds_its_provider() -> None:
    other = rule(issuer=OTHER_ISSUER)
    ctx = request(**bearer(token(iss=OTHER_ISSUER, sub="bob")))
    assert await authenticate(ctx, rule(), other) is None
    assert ctx.jwt_payload is not None and ctx.jwt_payload["sub"] == "bob"


async def test_expiry_and_not_before_allow_envoys_60_seconds_of_skew() -> None:
    ctx = request(**bearer(token(exp=NOW - 30)))
    assert await authenticate(ctx, rule()) is None
    ctx = request(**bearer(token(nbf=NOW + 30)))
    assert await authenticate(ctx, rule()) is None


# --- rejected tokens ---------------------------------------------------------------------------


async def test_an_expired_token_gets_401_jwt_is_expired() -> None:
    ctx = request(**bearer(token(exp=NOW - 120)))
    reply = await rejected(ctx, rule())
    assert (reply.status, reply.body, reply.flag) == (401, "Jwt is expired", "")
    assert reply.details == "jwt_authn_access_denied{Jwt_is_expired}"
    assert dict(reply.headers)["www-authenticate"] == (
        'Bearer realm="http://echo.apps:80/api", error="invalid_token"'
    )


async def test_a_token_not_yet_valid_gets_401() -> None:
    reply = await rejected(request(**bearer(token(nbf=NOW + 120))), rule())
    assert (reply.status, reply.body) == (401, "Jwt not yet valid")


async def test_a_token_signed_by_another_key_gets_401() -> None:
    # Same kid, other key: the signature does not verify.
    reply = await rejected(request(**bearer(token(WRONG_RSA_KEY))), rule())
    assert (reply.status, reply.body) == (401, "Jwt verification fails")
    # A kid the key set does not have.
    reply = await rejected(request(**bearer(token(WRONG_RSA_KEY, kid="rogue"))), rule())
    assert (reply.status, reply.body) == (
        401,
        "Jwks doesn't have key to match kid or alg from Jwt",
    )


async def test_a_token_whose_payload_was_changed_fails_verification() -> None:
    header, _, signature = token().split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "sub": "admin"}).encode()).rstrip(
        b"="
    )
    ctx = request(**bearer(f"{header}.{forged.decode()}.{signature}"))
    reply = await rejected(ctx, rule())
    assert reply.body == "Jwt verification fails"


async def test_a_wrong_audience_gets_403_as_envoy_answers_it() -> None:
    ctx = request(**bearer(token(aud="https://other.example/")))
    reply = await rejected(ctx, rule(audiences=("echo",)))
    assert (reply.status, reply.body) == (403, "Audiences in Jwt are not allowed")
    # Envoy compares audiences without the scheme and a trailing slash.
    ctx = request(**bearer(token(aud=["x", "https://echo/"])))
    assert await authenticate(ctx, rule(audiences=("http://echo",))) is None


async def test_an_unknown_issuer_gets_401() -> None:
    ctx = request(**bearer(token(iss="https://evil.example")))
    reply = await rejected(ctx, rule(), rule(issuer=OTHER_ISSUER))
    assert (reply.status, reply.body) == (401, "Jwt issuer is not configured")


async def test_with_two_issuers_the_real_failure_is_reported() -> None:
    ctx = request(**bearer(token(exp=NOW - 600)))
    reply = await rejected(ctx, rule(), rule(issuer=OTHER_ISSUER))
    assert reply.body == "Jwt is expired"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("abc", "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"),
        (
            "a.b.c.d",
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        ("%%%.e30.c2ln", "Jwt header is an invalid Base64url encoded"),
        ("bm90IGpzb24.e30.c2ln", "Jwt header is an invalid JSON"),
        ("e30.e30.c2ln", "Jwt header [alg] field is required and must be a string"),
        ("eyJhbGciOiJub25lIn0.e30.c2ln", "Jwt header [alg] is not supported"),
        ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "Jwt payload is an invalid JSON"),
        (
            "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiJzb29uIn0.c2ln",
            "Jwt payload [exp] field is not an integer",
        ),
        (
            "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOjF9.c2ln",
            "Jwt payload [aud] field is not a string or string list",
        ),
        ("eyJhbGciOiJSUzI1NiJ9.e30.!!", "Jwt signature is an invalid Base64url encoded"),
    ],
)
async def test_malformed_tokens_get_401_with_envoys_reason(text: str, reason: str) -> None:
    # A header without prefix hands the value over whole (after `Bearer `, Envoy would cut the
    # token at the first character that cannot be in one).
    whole = rule(issuer="", from_headers=(JwtHeader("x-jwt"),))
    reply = await rejected(request(x_jwt=text), whole)
    assert (reply.status, reply.body) == (401, reason)


async def test_every_token_a_provider_finds_must_verify() -> None:
    ctx = request(path=f"/api?access_token={token(WRONG_RSA_KEY)}", **bearer(token()))
    reply = await rejected(ctx, rule())
    assert reply.body == "Jwt verification fails"


async def test_keys_the_control_plane_could_not_fetch_fail_closed() -> None:
    unavailable = rule(jwks="", jwks_error="cannot fetch the keys: connection refused")
    reply = await rejected(request(**bearer(token())), unavailable)
    assert (reply.status, reply.body) == (401, "Jwks remote fetch is failed")
    # Requests without a token still pass: authorization decides about them.
    assert await authenticate(request(), unavailable) is None
    unusable = rule(jwks='{"keys": [{"kty": "RSA", "n": "!!"}]}')
    reply = await rejected(request(**bearer(token())), unusable)
    assert reply.body == "Jwks doesn't have any valid public key"


# --- the core ----------------------------------------------------------------------------------


def test_key_sets_that_cannot_be_used_are_named() -> None:
    for text, status in [
        ("nope", JwtStatus.JWKS_PARSE_ERROR),
        ("{}", JwtStatus.JWKS_NO_KEYS),
        ('{"keys": {}}', JwtStatus.JWKS_BAD_KEYS),
        ('{"keys": [{"kty": "XYZ"}]}', JwtStatus.JWKS_NO_VALID_KEYS),
    ]:
        with pytest.raises(JwtError) as raised:
            parse_jwks(text)
        assert raised.value.status is status
    # One bad key does not spoil the others.
    mixed = {"keys": [{"kty": "RSA", "n": "!!"}, jwk(EC_KEY, "ec-1")]}
    assert [k.kid for k in parse_jwks(json.dumps(mixed)).keys] == ["ec-1"]


def test_a_parsed_token_keeps_the_payload_section_as_sent() -> None:
    text = token(aud="one")
    parsed = parse_token(text)
    assert parsed.payload_base64 == text.split(".")[1]
    assert (parsed.issuer, parsed.audiences, parsed.alg, parsed.kid) == (
        ISSUER,
        ("one",),
        "RS256",
        "rsa-1",
    )


# --- the payload drives authorization ----------------------------------------------------------


def exact(value: str) -> StringMatch:
    return StringMatch(K.EXACT, value)


async def authorize(ctx: RequestContext, policies: list[Authorization]) -> int:
    """The status the waypoint's chain answers with: 401/403 or 200 (passed on)."""
    reply = await authenticate(ctx, rule())
    if reply is None:
        reply = await AuthorizationFilter(lambda _c: PolicySet(policies)).on_request_headers(ctx)
    return 200 if reply is None else reply.status


async def test_only_admins_may_delete_and_anonymous_requests_need_a_principal() -> None:
    principals = Match(request_principals=(RequestPrincipalMatch(exact(ISSUER), exact("alice")),))
    admins = Match(claims=(ClaimCondition(("groups",), (exact("admin"),)),))
    not_delete = Match(not_methods=(exact("DELETE"),))
    policies = [
        Authorization(
            "jwt",
            "apps",
            PolicyScope.WORKLOAD_SELECTOR,
            Action.ALLOW,
            # any request of alice's but DELETE; DELETE only for admins
            (((principals,), (not_delete,)), ((principals,), (admins,))),
        )
    ]
    admin = token(groups=["admin"])
    user = token(groups=["dev"])
    assert await authorize(request(method="DELETE", **bearer(admin)), policies) == 200
    assert await authorize(request(method="DELETE", **bearer(user)), policies) == 403
    assert await authorize(request(method="GET", **bearer(user)), policies) == 200
    assert await authorize(request(method="GET"), policies) == 403
    assert await authorize(request(**bearer(token(RSA_KEY, sub="mallory"))), policies) == 403
    assert await authorize(request(**bearer(token(WRONG_RSA_KEY))), policies) == 401


def test_the_filter_clock_defaults_to_wall_time() -> None:
    # Tokens minted now verify with the filter's default clock.
    f = JwtAuthnFilter(lambda _ctx: (rule(),))
    live = pyjwt.encode(
        {"iss": ISSUER, "sub": "alice", "exp": int(time.time()) + 60},
        RSA_KEY,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    ctx = request(**bearer(live))

    async def main() -> LocalReply | None:
        return await f.on_request_headers(ctx)

    assert trio.run(main) is None
