"""End-user authentication at a waypoint: RequestAuthentication's JWT rules as the waypoint
applies them (istiod's `jwt_authn` provider per rule, with the keys resolved by the control plane).

A waypoint verifies the token of a request against every rule that applies to the request's
service, merged from all the RequestAuthentications that target it and ordered by issuer (as
istiod orders them). The keys travel inline (`jwks`): the control plane fetched `jwksUri` (or the
issuer's OpenID discovery document) itself, as istiod does by default; when it could not,
`jwks_error` says why and the waypoint rejects every token of that issuer, never accepts one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_SPACE_DELIMITED_CLAIMS",
    "ClaimToHeader",
    "JwtHeader",
    "JwtRule",
    "WaypointAuthentication",
]

# Claims Envoy splits at spaces before policies see them (istiod always configures these two).
DEFAULT_SPACE_DELIMITED_CLAIMS = ("permission", "scope")


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """A header the token may come in; `prefix` ("Bearer ") is stripped."""

    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    """Copy claim `claim` (nested with `.`) of a verified token into request header `header`."""

    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str
    # the token must carry one of them (empty: any audience)
    audiences: tuple[str, ...] = ()
    # the JSON Web Key Set, as text (empty with `jwks_error` set: the keys are unavailable)
    jwks: str = ""
    # why the keys could not be resolved ("" when `jwks` holds them)
    jwks_error: str = ""
    forward_original_token: bool = False
    # header to carry the verified payload (base64url, as in the token); "" none
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    # where the token is looked for; all empty: `Authorization: Bearer` and `?access_token=`
    from_headers: tuple[JwtHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    # claims whose string value is split at spaces for authorization
    space_delimited_claims: tuple[str, ...] = DEFAULT_SPACE_DELIMITED_CLAIMS
    # where it came from ("RequestAuthentication apps/jwt"), for logs
    origin: str = ""


@dataclass(frozen=True, slots=True)
class WaypointAuthentication:
    """A RequestAuthentication a waypoint applies: to every request it serves (`services`
    empty: the Gateway or the GatewayClass was targeted) or to requests for the listed services
    (`namespace/hostname`)."""

    name: str
    namespace: str
    rules: tuple[JwtRule, ...]
    services: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def applies_to(self, service: str) -> bool:
        return not self.services or service in self.services
