"""End-user authentication (RequestAuthentication): Envoy's `jwt_authn` filter as istiod
configures it for a waypoint.

Each JWT rule is a provider; istiod asks that a request either carries a token that one provider
accepts, or carries no token any provider looks for. So:

- no rule applies, or the request is a CORS preflight (OPTIONS with `Origin` and
  `Access-Control-Request-Method`): nothing is checked;
- a request without a token passes, anonymous; authorization decides (a policy requiring
  `requestPrincipals` then denies it with 403);
- a token one provider verifies passes, and its payload is the request's end-user identity for
  authorization (`iss/sub`, claims; `scope` and `permission` and the rule's
  `spaceDelimitedClaims` split at spaces);
- any other token is rejected: `401` (`403` for a token whose audience is not allowed) with
  Envoy's reason as the body (`Jwt is expired`, `Jwt verification fails`, `Jwt issuer is not
  configured`...), `www-authenticate: Bearer realm="<url>", error="invalid_token"`, response code
  details `jwt_authn_access_denied{<reason>}`, and no response flag, as Envoy answers. A provider
  whose keys the control plane could not fetch rejects every token of its issuer (`Jwks remote
  fetch is failed`): it fails closed, never open.

Where a provider looks: its `fromHeaders` (the value after `prefix`, up to the first character
that cannot be in a token), `fromParams` and `fromCookies`; with none of them, `Authorization:
Bearer <token>` and the `access_token` query parameter. Every token a provider finds must verify.
With several providers the reason reported is the one Envoy's requirement tree ends with: any
failure other than a missing token or an unknown issuer wins over those two.

After a provider accepted a request: its `outputPayloadToHeader` carries the token's payload
section (base64url, as in the token) and each `outputClaimToHeaders` header the claim (strings
as they are, numbers and booleans as text, objects and lists as base64 JSON); values a client
sent in those headers are removed first. Unless `forwardOriginalToken`, a token taken from a
header is removed with that header (tokens in parameters and cookies stay, as in Envoy).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote_plus

from ztunnel_py.http.filter import Filter, LocalReply, RequestContext
from ztunnel_py.http.message import RequestHead
from ztunnel_py.identity.jwt import (
    Jwks,
    JwtError,
    JwtStatus,
    Token,
    audiences_allowed,
    check_time,
    parse_jwks,
    parse_token,
    verify_signature,
)
from ztunnel_py.model.authn import JwtRule

log = logging.getLogger(__name__)

__all__ = ["Authenticated", "JwtAuthenticator", "JwtAuthnFilter"]

_BEARER = "Bearer "
_ACCESS_TOKEN = "access_token"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
# Envoy puts at most this much of the path into the `realm` of a 401.
_MAX_REALM_PATH = 256
# compiled authenticators kept for distinct rule sets (one per service, usually)
_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class _Location:
    kind: str  # "header", "param" or "cookie"
    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class _Found:
    token: str
    location: _Location


def _token_after(value: str, start: int) -> str:
    """Envoy's extraction after a prefix: the first run of token characters, or the whole
    value if there is none."""
    begin = start
    while begin < len(value) and value[begin] not in _TOKEN_CHARS:
        begin += 1
    if begin == len(value):
        return value
    end = begin
    while end < len(value) and value[end] in _TOKEN_CHARS:
        end += 1
    return value[begin:end]


def _query_params(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        params.setdefault(unquote_plus(key), unquote_plus(value))
    return params


def _cookies(request: RequestHead) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in request.headers.get_all("cookie"):
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except Exception:  # http.cookies raises CookieError on malformed input
            continue
        for name, morsel in jar.items():
            found.setdefault(name, morsel.value)
    return found


class _Provider:
    """One JWT rule, ready to verify tokens."""

    def __init__(self, rule: JwtRule) -> None:
        self.rule = rule
        self.jwks: Jwks | None = None
        # why tokens cannot be verified when `jwks` is None
        self.unavailable = JwtStatus.JWKS_FETCH_FAIL
        if rule.jwks_error:
            log.error(
                "JWT issuer %s (%s): no keys (%s): its tokens are rejected",
                rule.issuer,
                rule.origin,
                rule.jwks_error,
            )
        else:
            try:
                self.jwks = parse_jwks(rule.jwks)
            except JwtError as e:
                self.unavailable = JwtStatus.JWKS_NO_VALID_KEYS
                log.error(
                    "JWT issuer %s (%s): unusable keys: %s: its tokens are rejected",
                    rule.issuer,
                    rule.origin,
                    e,
                )
        locations = [_Location("header", h.name.lower(), h.prefix) for h in rule.from_headers]
        locations += [_Location("param", p) for p in rule.from_params]
        locations += [_Location("cookie", c) for c in rule.from_cookies]
        if not locations:
            locations = [
                _Location("header", "authorization", _BEARER),
                _Location("param", _ACCESS_TOKEN),
            ]
        # Envoy's order: headers by name and prefix, then parameters, then cookies, by name.
        order = {"header": 0, "param": 1, "cookie": 2}
        self.locations = sorted(set(locations), key=lambda x: (order[x.kind], x.name + x.prefix))
        self.output_headers = {c.header.lower() for c in rule.output_claim_to_headers}
        if rule.output_payload_to_header:
            self.output_headers.add(rule.output_payload_to_header.lower())

    def extract(self, request: RequestHead) -> list[_Found]:
        found: list[_Found] = []
        params: dict[str, str] | None = None
        cookies: dict[str, str] | None = None
        for loc in self.locations:
            if loc.kind == "header":
                value = request.headers.joined(loc.name)
                if value is None:
                    continue
                if loc.prefix:
                    at = value.find(loc.prefix)
                    if at < 0:
                        continue
                    value = _token_after(value, at + len(loc.prefix))
                found.append(_Found(value, loc))
            elif loc.kind == "param":
                params = _query_params(request.query) if params is None else params
                if loc.name in params:
                    found.append(_Found(params[loc.name], loc))
            else:
                cookies = _cookies(request) if cookies is None else cookies
                if loc.name in cookies:
                    found.append(_Found(cookies[loc.name], loc))
        return found

    def verify(self, text: str, now: float) -> tuple[JwtStatus, Token | None]:
        try:
            token = parse_token(text)
        except JwtError as e:
            return e.status, None
        if self.rule.issuer and token.issuer != self.rule.issuer:
            return JwtStatus.UNKNOWN_ISSUER, None
        status = check_time(token, now)
        if status is not JwtStatus.OK:
            return status, None
        if not audiences_allowed(self.rule.audiences, token):
            return JwtStatus.AUDIENCE_NOT_ALLOWED, None
        if self.jwks is None:
            return self.unavailable, None
        status = verify_signature(token, self.jwks)
        return status, (token if status is JwtStatus.OK else None)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The outcome for one request: OK (with the verified tokens and the provider that took
    them, none for an anonymous request) or the reason it is rejected."""

    status: JwtStatus
    rule: JwtRule | None = None
    tokens: tuple[tuple[Token, _Location], ...] = ()

    @property
    def payload(self) -> Mapping[str, Any] | None:
        """The last verified token's payload, with the rule's space-delimited claims split (what
        Envoy puts in its metadata for authorization)."""
        if self.rule is None or not self.tokens:
            return None
        payload = dict(self.tokens[-1][0].payload)
        for claim in self.rule.space_delimited_claims:
            value = payload.get(claim)
            if isinstance(value, str):
                payload[claim] = [part for part in value.split(" ") if part]
        return payload


class JwtAuthenticator:
    """The JWT rules that apply to one service, compiled."""

    def __init__(self, rules: Sequence[JwtRule]) -> None:
        self.providers = tuple(_Provider(r) for r in rules)
        self.output_headers = frozenset(h for p in self.providers for h in p.output_headers)

    def authenticate(self, request: RequestHead, now: float) -> Authenticated:
        statuses: list[JwtStatus] = []
        for provider in self.providers:
            verified: list[tuple[Token, _Location]] = []
            status = JwtStatus.MISSED
            # Envoy verifies the last token found first; every one must pass.
            for found in reversed(provider.extract(request)):
                status, token = provider.verify(found.token, now)
                if token is None:
                    break
                verified.append((token, found.location))
            if status is JwtStatus.OK:
                return Authenticated(JwtStatus.OK, provider.rule, tuple(verified))
            statuses.append(status)
        # No provider accepted a token. Each must then have found none (istiod's
        # `allow_missing` branch); else the failure is the one Envoy's OR of the providers and
        # that branch reports.
        branch = next((s for s in statuses if s is not JwtStatus.MISSED), None)
        if branch is None:
            return Authenticated(JwtStatus.OK)
        final = JwtStatus.MISSED
        for status in (*statuses, branch):
            benign = status in (JwtStatus.MISSED, JwtStatus.UNKNOWN_ISSUER)
            if not benign or final is JwtStatus.MISSED:
                final = status
        return Authenticated(final)


def apply_outputs(request: RequestHead, outcome: Authenticated) -> None:
    """The accepted provider's header changes: payload and claim headers, token removal."""
    rule = outcome.rule
    if rule is None:
        return
    headers = request.headers
    for token, location in outcome.tokens:
        if rule.output_payload_to_header:
            headers.add(rule.output_payload_to_header, token.payload_base64)
        for claim_header in rule.output_claim_to_headers:
            value = _claim_text(token.payload, claim_header.claim)
            if value:
                headers.add(claim_header.header, value)
        if not rule.forward_original_token and location.kind == "header":
            headers.remove(location.name)


def _claim_text(payload: Mapping[str, Any], claim: str) -> str:
    value: Any = payload
    for key in claim.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return ""
        value = value[key]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
        return base64.b64encode(text.encode()).decode()
    return ""


def _cors_preflight(request: RequestHead) -> bool:
    headers = request.headers
    return (
        request.method == "OPTIONS"
        and bool(headers.get("origin"))
        and bool(headers.get("access-control-request-method"))
    )


class JwtAuthnFilter(Filter):
    name = "jwt_authn"

    def __init__(
        self,
        rules: Callable[[RequestContext], Sequence[JwtRule]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`rules` gives the JWT rules that apply to a request (empty: none)."""
        self._rules = rules
        self._clock = clock
        self._compiled: dict[tuple[JwtRule, ...], JwtAuthenticator] = {}

    def _authenticator(self, rules: tuple[JwtRule, ...]) -> JwtAuthenticator:
        found = self._compiled.get(rules)
        if found is None:
            if len(self._compiled) >= _CACHE_SIZE:
                self._compiled.clear()
            found = self._compiled[rules] = JwtAuthenticator(rules)
        return found

    async def on_request_headers(self, ctx: RequestContext) -> LocalReply | None:
        rules = tuple(self._rules(ctx))
        request = ctx.request
        if not rules or _cors_preflight(request):
            return None
        authenticator = self._authenticator(rules)
        request.headers.discard(authenticator.output_headers)
        outcome = authenticator.authenticate(request, self._clock())
        if outcome.status is JwtStatus.OK:
            apply_outputs(request, outcome)
            ctx.jwt_payload = outcome.payload
            return None
        reason = outcome.status.value
        realm = f"http://{request.authority}{request.path[:_MAX_REALM_PATH]}"
        challenge = f'Bearer realm="{realm}"'
        if outcome.status is not JwtStatus.MISSED:
            challenge += ', error="invalid_token"'
        return LocalReply(
            403 if outcome.status is JwtStatus.AUDIENCE_NOT_ALLOWED else 401,
            reason,
            headers=(("www-authenticate", challenge),),
            details=f"jwt_authn_access_denied{{{'_'.join(reason.split())}}}",
        )
