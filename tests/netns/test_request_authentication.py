"""End-user authentication at the waypoint end to end: RequestAuthentication and
AuthorizationPolicy applied to the testbed, tokens signed with a key made here, curl as the
client, the control plane fetching a `jwksUri` served by a pod.

One 2-node ambient testbed with the `apps` waypoint (tests/netns/test_waypoint.py's fixture).
Clients in `web-1` call the `echo` service through the waypoint; the echo app answers with the
headers it received, so the tests also see what the waypoint forwarded. A JWKS server (Python's
http.server, started here) runs in pod echo-1 on port 8443 behind a Service `jwks`: the control
plane finds it as istiod would through cluster DNS, by the Service's hostname. Each test removes
what it applied.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.netns import test_waypoint
from tests.netns.test_waypoint import wait_until as wait_until_within
from tests.netns.test_waypoint import waypoint
from ztunnel_py.testbed.testbed import Testbed

pytestmark = pytest.mark.netns

# The waypoint tests' testbed (a module-scoped fixture: this module gets one of its own).
bed = test_waypoint.bed

ECHO_VIP = "10.96.0.10"
ISSUER = "https://auth.example.com"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
WRONG_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps(
    {"keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1", "alg": "RS256"}]}
)
JWKS_PORT = 8443
# The pod that serves the key set (echo-1: app echo, version v1) and the Service in front of it.
JWKS_POD = "echo-1"
JWKS_SERVICE = f"""\
apiVersion: v1
kind: Service
metadata: {{name: jwks, namespace: apps}}
spec:
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 80, targetPort: {JWKS_PORT}}}]
"""


def token(key: Any = KEY, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 600, **claims}
    return pyjwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


def request_authentication(jwt_rule: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: jwt, namespace: apps}\n"
        'spec:\n  targetRefs: [{kind: Service, group: "", name: echo}]\n'
        f"  jwtRules:\n  - issuer: {ISSUER}\n{jwt_rule}"
    )


INLINE = request_authentication(
    f"    jwks: '{JWKS}'\n"
    "    outputPayloadToHeader: x-jwt-payload\n"
    "    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]\n"
)

# Every request needs a token of ours; DELETE only with the claim group=admin.
POLICIES = f"""\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: apps}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  rules: [{{from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-delete, namespace: apps}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: DENY
  rules:
  - to: [{{operation: {{methods: [DELETE]}}}}]
    when: [{{key: "request.auth.claims[group]", notValues: [admin]}}]
"""


@pytest.fixture(scope="module")
def jwks_server(bed: Testbed) -> Iterator[None]:
    """http.server in pod echo-1 serving jwks.json (started and stopped here, by pid)."""
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "jwks.json").write_text(JWKS)
        argv = [sys.executable, "-m", "http.server", str(JWKS_PORT), "--directory", directory]
        server = subprocess.Popen(
            bed.exec_argv(JWKS_POD, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(
                lambda: (
                    bed.exec(
                        JWKS_POD,
                        [
                            "curl",
                            "-sf",
                            "-o",
                            "/dev/null",
                            f"http://127.0.0.1:{JWKS_PORT}/jwks.json",
                        ],
                    ).returncode
                    == 0
                ),
                "the JWKS server",
            )
            yield
        finally:
            server.terminate()
            server.wait(10)


def wait_until(check: Callable[[], bool], what: str) -> None:
    wait_until_within(check, what, within=20.0)


def call(
    bed: Testbed, method: str = "GET", token_text: str | None = None, path: str = "/api"
) -> tuple[int, str, dict[str, str]]:
    """(status, body, response headers) of one curl request from web-1 through the waypoint."""
    args = ["curl", "-sS", "--max-time", "10", "-X", method, "-D", "-"]
    if token_text is not None:
        args += ["-H", f"Authorization: Bearer {token_text}"]
    done = bed.exec("web-1", [*args, f"http://{ECHO_VIP}{path}"], timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.splitlines()
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), body, headers


def app_headers(body: str) -> dict[str, str]:
    """The request headers the echo app saw (lower-case names)."""
    seen: dict[str, str] = json.loads(body)["headers"]
    return {k.lower(): v for k, v in seen.items()}


def controlplane_debug(bed: Testbed) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", bed.topology.cp_netns, "curl", "-sS", "--max-time", "5",
         bed.controlplane_debug_url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def waypoint_log(bed: Testbed) -> str:
    return Path(waypoint(bed).log or "").read_text(errors="replace")


def test_tokens_are_verified_and_anonymous_requests_pass_without_a_policy(bed: Testbed) -> None:
    bed.apply(INLINE)
    try:
        wait_until(lambda: call(bed, token_text=token(WRONG_KEY))[0] == 401, "the JWT rule")
        status, body, headers = call(bed, token_text=token(WRONG_KEY))
        assert body == "Jwt verification fails"
        assert headers["www-authenticate"] == (
            f'Bearer realm="http://{ECHO_VIP}/api", error="invalid_token"'
        )
        expired = token(exp=int(time.time()) - 3600)
        assert call(bed, token_text=expired)[:2] == (401, "Jwt is expired")
        assert call(bed, token_text="not.a.token")[:2] == (401, "Jwt header is an invalid JSON")
        # No token: nothing requires one yet.
        status, body, _ = call(bed)
        assert status == 200 and "authorization" not in app_headers(body)
        # A valid token: the app gets the payload and the claim, not the token.
        good = token(group="dev")
        status, body, _ = call(bed, token_text=good)
        assert status == 200
        seen = app_headers(body)
        assert "authorization" not in seen
        assert seen["x-jwt-group"] == "dev"
        payload = json.loads(base64.urlsafe_b64decode(seen["x-jwt-payload"] + "=="))
        assert (payload["iss"], payload["sub"]) == (ISSUER, "alice")
        # Envoy's access log entry for the rejection.
        assert "response_code=401" in waypoint_log(bed)
        assert "jwt_authn_access_denied{Jwt_verification_fails}" in waypoint_log(bed)
    finally:
        bed.delete(INLINE)


def test_claims_drive_authorization_and_a_policy_can_require_a_token(bed: Testbed) -> None:
    bed.apply(INLINE + "---\n" + POLICIES)
    try:
        wait_until(lambda: call(bed)[0] == 403, "the policies")
        status, body, _ = call(bed)
        assert (status, body) == (403, "RBAC: access denied")
        admin, dev = token(group="admin"), token(group="dev")
        assert call(bed, "DELETE", admin)[0] == 200
        assert call(bed, "DELETE", dev)[:2] == (403, "RBAC: access denied")
        assert call(bed, "GET", dev)[0] == 200
        # A token of another issuer is no principal of ours: it is not even accepted.
        assert call(bed, token_text=token(iss="https://other.example"))[:2] == (
            401,
            "Jwt issuer is not configured",
        )
        assert call(bed, token_text=token(WRONG_KEY, group="admin"))[0] == 401
    finally:
        bed.delete(POLICIES)
        bed.delete(INLINE)


def test_a_jwks_uri_served_by_a_pod_is_fetched_by_the_control_plane(
    bed: Testbed, jwks_server: None
) -> None:
    remote = request_authentication("    jwksUri: http://jwks.apps.svc.cluster.local/jwks.json\n")
    bed.apply(JWKS_SERVICE + "---\n" + remote)
    fetched = {
        "issuer": ISSUER,
        "jwksUri": "http://jwks.apps.svc.cluster.local/jwks.json",
        "state": "keys",
    }
    try:
        # The control plane reports the key set once its fetch returned; until then the
        # waypoint may still hold an earlier test's rule for the same issuer.
        wait_until(lambda: fetched in controlplane_debug(bed)["jwks"], "keys from the jwksUri")
        # Verification (rather than "Jwks remote fetch is failed") shows the keys arrived.
        wait_until(
            lambda: call(bed, token_text=token(WRONG_KEY))[:2] == (401, "Jwt verification fails"),
            "the fetched keys at the waypoint",
        )
        assert call(bed, token_text=token())[0] == 200
    finally:
        bed.delete(remote)
        bed.delete(JWKS_SERVICE)


def test_keys_that_cannot_be_fetched_fail_closed(bed: Testbed) -> None:
    # echo-1's address, on a port nothing listens on.
    broken = request_authentication("    jwksUri: http://10.244.1.10:9/keys\n")
    bed.apply(broken)
    try:
        wait_until(lambda: call(bed, token_text=token())[0] == 401, "the rule without keys")
        assert call(bed, token_text=token())[:2] == (401, "Jwks remote fetch is failed")
        # Without a token the request is anonymous, and nothing here requires a principal.
        assert call(bed)[0] == 200
        warnings = controlplane_debug(bed)["warnings"]
        assert any(
            "spec.jwtRules[0].jwksUri: warning: cannot fetch the keys of issuer" in w
            for w in warnings
        ), warnings
    finally:
        bed.delete(broken)
