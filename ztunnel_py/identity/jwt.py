"""End-user identities: JSON Web Tokens and the key sets that verify them, without I/O.

PyJWT (with `cryptography`) turns JWKs into public keys and checks signatures; what a token must
look like, which key is tried and what each failure is called follow Envoy's JWT library
(`source/common/jwt`), so a waypoint answers exactly as an Envoy waypoint would:

- a token is three non-empty base64url sections; the header must be a JSON object with a
  supported `alg` (RS/PS/ES 256-512, HS 256-512, EdDSA) and a string `kid` if any; the payload a
  JSON object whose `iss`, `sub`, `jti` are strings, `iat`, `nbf`, `exp` non-negative integers
  and `aud` a string or a list of strings;
- a key set is `{"keys": [...]}`; keys that cannot be used are skipped, a set without any usable
  key is invalid;
- a signature is checked with every key whose `kid` (when both have one) and `alg` (when the key
  has one) agree with the token's; none agreeing is `JwksKidAlgMismatch`, none verifying is
  `JwtVerificationFail`;
- time: `nbf` later than now plus the clock skew (60 s) is not yet valid, `exp` (when set) more
  than the skew in the past is expired;
- audiences: with audiences configured, one of the token's must equal one of them, both compared
  without an `http://` or `https://` prefix and a trailing `/`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jwt import PyJWK
from jwt.algorithms import Algorithm, get_default_algorithms

__all__ = [
    "CLOCK_SKEW",
    "Jwks",
    "JwtError",
    "JwtStatus",
    "Token",
    "audiences_allowed",
    "check_time",
    "parse_jwks",
    "parse_token",
    "verify_signature",
]

# Envoy's default tolerance for `exp` and `nbf`, in seconds.
CLOCK_SKEW = 60


class JwtStatus(enum.Enum):
    """Envoy's verification outcomes, valued by the text Envoy answers with."""

    OK = "OK"
    MISSED = "Jwt is missing"
    NOT_YET_VALID = "Jwt not yet valid"
    EXPIRED = "Jwt is expired"
    BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    HEADER_BAD_BASE64 = "Jwt header is an invalid Base64url encoded"
    HEADER_BAD_JSON = "Jwt header is an invalid JSON"
    HEADER_BAD_ALG = "Jwt header [alg] field is required and must be a string"
    HEADER_ALG_NOT_IMPLEMENTED = "Jwt header [alg] is not supported"
    HEADER_BAD_KID = "Jwt header [kid] field is not a string"
    PAYLOAD_BAD_BASE64 = "Jwt payload is an invalid Base64url encoded"
    PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
    ISS_NOT_STRING = "Jwt payload [iss] field is not a string"
    SUB_NOT_STRING = "Jwt payload [sub] field is not a string"
    IAT_NOT_INTEGER = "Jwt payload [iat] field is not an integer"
    IAT_OUT_OF_RANGE = "Jwt payload [iat] field is not a positive 64 bit integer"
    NBF_NOT_INTEGER = "Jwt payload [nbf] field is not an integer"
    NBF_OUT_OF_RANGE = "Jwt payload [nbf] field is not a positive 64 bit integer"
    EXP_NOT_INTEGER = "Jwt payload [exp] field is not an integer"
    EXP_OUT_OF_RANGE = "Jwt payload [exp] field is not a positive 64 bit integer"
    JTI_NOT_STRING = "Jwt payload [jti] field is not a string"
    AUD_NOT_STRING = "Jwt payload [aud] field is not a string or string list"
    SIGNATURE_BAD_BASE64 = "Jwt signature is an invalid Base64url encoded"
    UNKNOWN_ISSUER = "Jwt issuer is not configured"
    AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
    VERIFICATION_FAIL = "Jwt verification fails"
    JWKS_PARSE_ERROR = "Jwks is an invalid JSON"
    JWKS_NO_KEYS = "Jwks does not have [keys] field"
    JWKS_BAD_KEYS = "[keys] in Jwks is not an array"
    JWKS_NO_VALID_KEYS = "Jwks doesn't have any valid public key"
    JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"
    JWKS_FETCH_FAIL = "Jwks remote fetch is failed"


class JwtError(Exception):
    def __init__(self, status: JwtStatus, detail: str = "") -> None:
        super().__init__(f"{status.value}: {detail}" if detail else status.value)
        self.status = status


# What each `alg` needs: the key type (and for EdDSA the curve) it verifies with.
_ALG_KTY = {
    **{f"{family}{bits}": "RSA" for family in ("RS", "PS") for bits in (256, 384, 512)},
    **{f"ES{bits}": "EC" for bits in (256, 384, 512)},
    **{f"HS{bits}": "oct" for bits in (256, 384, 512)},
    "EdDSA": "OKP",
}
_ALGORITHMS: Mapping[str, Algorithm] = {
    name: algorithm for name, algorithm in get_default_algorithms().items() if name in _ALG_KTY
}
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_MAX_UINT64 = 2**64


def _b64decode(text: str, status: JwtStatus) -> bytes:
    """base64url with or without padding; JwtError(status) for anything else."""
    stripped = text.rstrip("=")
    if not _BASE64URL.match(text) or len(stripped) % 4 == 1:
        raise JwtError(status)
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise JwtError(status) from None


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Jwk:
    kty: str
    kid: str
    alg: str
    crv: str
    key: Any


@dataclass(frozen=True, slots=True)
class Jwks:
    keys: tuple[Jwk, ...]


def parse_jwks(text: str) -> Jwks:
    """The usable keys of a JSON Web Key Set; JwtError (JWKS_*) if it has none."""
    document = _json_object(text.encode())
    if document is None:
        raise JwtError(JwtStatus.JWKS_PARSE_ERROR)
    if "keys" not in document:
        raise JwtError(JwtStatus.JWKS_NO_KEYS)
    if not isinstance(document["keys"], list):
        raise JwtError(JwtStatus.JWKS_BAD_KEYS)
    keys: list[Jwk] = []
    problems: list[str] = []
    for i, entry in enumerate(document["keys"]):
        try:
            keys.append(_jwk(entry))
        except ValueError as e:
            problems.append(f"keys[{i}]: {e}")
    if not keys:
        raise JwtError(JwtStatus.JWKS_NO_VALID_KEYS, "; ".join(problems) or "no keys")
    return Jwks(tuple(keys))


def _jwk(entry: object) -> Jwk:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    kty, kid, alg, crv = (entry.get(k, "") for k in ("kty", "kid", "alg", "crv"))
    if not all(isinstance(v, str) for v in (kty, kid, alg, crv)):
        raise ValueError("kty, kid, alg and crv must be strings")
    if kty not in ("RSA", "EC", "oct", "OKP"):
        raise ValueError(f"kty {kty!r} is not supported")
    if alg and _ALG_KTY.get(alg) != kty:
        raise ValueError(f"alg {alg!r} does not fit a {kty} key")
    if kty == "OKP" and crv != "Ed25519":
        raise ValueError(f"crv {crv!r} is not supported for an OKP key")
    try:
        parsed = PyJWK(entry)
    except Exception as e:  # PyJWT raises several types (InvalidKeyError, PyJWKError, ...)
        raise ValueError(str(e) or type(e).__name__) from None
    key = parsed.key
    # A private key in a key set still verifies only with its public half.
    if hasattr(key, "public_key") and not isinstance(key, bytes):
        key = key.public_key()
    return Jwk(kty, kid, alg, crv, key)


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    alg: str
    kid: str
    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    # the payload section as sent (base64url)
    payload_base64: str
    signing_input: bytes
    signature: bytes
    issuer: str
    audiences: tuple[str, ...]
    nbf: int
    exp: int


def parse_token(text: str) -> Token:
    """A token's sections and the claims Envoy checks; JwtError on any malformation."""
    sections = [s for s in text.split(".") if s]
    if len(sections) != 3:
        raise JwtError(JwtStatus.BAD_FORMAT)
    header_text, payload_text, signature_text = sections
    header = _json_object(_b64decode(header_text, JwtStatus.HEADER_BAD_BASE64))
    if header is None:
        raise JwtError(JwtStatus.HEADER_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise JwtError(JwtStatus.HEADER_BAD_ALG)
    if alg not in _ALG_KTY:
        raise JwtError(JwtStatus.HEADER_ALG_NOT_IMPLEMENTED)
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        raise JwtError(JwtStatus.HEADER_BAD_KID)
    payload = _json_object(_b64decode(payload_text, JwtStatus.PAYLOAD_BAD_BASE64))
    if payload is None:
        raise JwtError(JwtStatus.PAYLOAD_BAD_JSON)
    for claim, status in (
        ("iss", JwtStatus.ISS_NOT_STRING),
        ("sub", JwtStatus.SUB_NOT_STRING),
    ):
        if claim in payload and not isinstance(payload[claim], str):
            raise JwtError(status)
    times = {
        claim: _uint64(payload, claim, wrong, out_of_range)
        for claim, wrong, out_of_range in (
            ("iat", JwtStatus.IAT_NOT_INTEGER, JwtStatus.IAT_OUT_OF_RANGE),
            ("nbf", JwtStatus.NBF_NOT_INTEGER, JwtStatus.NBF_OUT_OF_RANGE),
            ("exp", JwtStatus.EXP_NOT_INTEGER, JwtStatus.EXP_OUT_OF_RANGE),
        )
    }
    if "jti" in payload and not isinstance(payload["jti"], str):
        raise JwtError(JwtStatus.JTI_NOT_STRING)
    aud = payload.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise JwtError(JwtStatus.AUD_NOT_STRING)
    signature = _b64decode(signature_text, JwtStatus.SIGNATURE_BAD_BASE64)
    return Token(
        text=text,
        alg=alg,
        kid=kid,
        header=header,
        payload=payload,
        payload_base64=payload_text,
        signing_input=f"{header_text}.{payload_text}".encode(),
        signature=signature,
        issuer=payload.get("iss", ""),
        audiences=tuple(audiences),
        nbf=times["nbf"],
        exp=times["exp"],
    )


def _uint64(payload: Mapping[str, Any], claim: str, wrong: JwtStatus, bad: JwtStatus) -> int:
    value = payload.get(claim)
    if value is None and claim not in payload:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtError(wrong)
    if not 0 <= value < _MAX_UINT64:
        raise JwtError(bad)
    return int(value)


def check_time(token: Token, now: float, skew: int = CLOCK_SKEW) -> JwtStatus:
    if now + skew < token.nbf:
        return JwtStatus.NOT_YET_VALID
    if token.exp and now > token.exp + skew:
        return JwtStatus.EXPIRED
    return JwtStatus.OK


def _sanitize_audience(audience: str) -> str:
    for scheme in ("http://", "https://"):
        if audience.startswith(scheme):
            audience = audience[len(scheme) :]
            break
    return audience[:-1] if audience.endswith("/") else audience


def audiences_allowed(configured: Iterable[str], token: Token) -> bool:
    allowed = {_sanitize_audience(a) for a in configured}
    return not allowed or any(_sanitize_audience(a) in allowed for a in token.audiences)


def verify_signature(token: Token, jwks: Jwks) -> JwtStatus:
    matched = False
    algorithm = _ALGORITHMS[token.alg]
    for jwk in jwks.keys:
        if token.kid and jwk.kid and jwk.kid != token.kid:
            continue
        if jwk.alg and jwk.alg != token.alg:
            continue
        matched = True
        if _ALG_KTY[token.alg] != jwk.kty:
            continue
        try:
            if algorithm.verify(token.signing_input, jwk.key, token.signature):
                return JwtStatus.OK
        except Exception:  # a key of another curve or size: not this one
            continue
    return JwtStatus.VERIFICATION_FAIL if matched else JwtStatus.JWKS_KID_ALG_MISMATCH
