"""security.istio.io: AuthorizationPolicy, PeerAuthentication and RequestAuthentication, validated
as Istio's webhook validates them (`pkg/config/validation`, `pkg/config/security`): what it
accepts is accepted (a principal is any non-empty string, a namespace too), what it rejects is
rejected, with its reasons. Its warnings are warnings here (a selector without labels; a DENY
rule made only of HTTP attributes), and so is istiod's status for what ztunnel does with a
policy it enforces (`conversion_status`: AUDIT and CUSTOM are not enforced at L4, HTTP
attributes are left out). `L4_CONDITIONS` and `http_attributes` are shared with the translation,
so validation and enforcement agree on what L4 means.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ztunnel_py.controlplane.validation.kube import (
    SELECTOR_MATCH_LABELS,
    KindInfo,
    custom_resource,
)
from ztunnel_py.identity.jwt import JwtError, parse_jwks
from ztunnel_py.yamlschema.schema import (
    BOOL,
    STR,
    Checker,
    ListOf,
    MapOf,
    Node,
    Str,
    StrCheck,
    obj,
    port_key,
    strings,
)

API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

# --- values, as pkg/config/security checks them ------------------------------------------------


def _no_empty(text: str) -> str | None:
    return "empty value is not allowed" if text == "" else None


def _non_empty(field: str) -> StrCheck:
    def check(text: str) -> str | None:
        return f"empty value not allowed, found in {field}" if text == "" else None

    return check


def ip_or_cidr(text: str) -> str | None:
    """`ValidateIPs`: an address, or a prefix (host bits may be set) when it has a `/`."""
    try:
        if "/" in text:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text)
    except ValueError:
        if "/" in text:
            return f"bad CIDR range ({text}): not an address prefix"
        return f"bad IP address ({text})"
    if "%" in text:
        return f"bad IP address ({text})"
    return None


def port_value(text: str) -> str | None:
    """`ValidatePorts`: a decimal number 0-65535."""
    if not (text.isascii() and text.isdigit()) or int(text[:6]) > 65535:
        return f"bad port ({text}): not a number within 0-65535"
    return None


def principal_hint(text: str) -> str | None:
    """Not an error for Istio, but a principal never matches a `spiffe://` identity."""
    if text.startswith("spiffe://"):
        return (
            f"principal {text!r} never matches: principals are written without 'spiffe://', "
            f"e.g. {text[len('spiffe://') :]!r}"
        )
    return None


_SERVICE_ACCOUNT_FORMAT = "expected format 'serviceAccount' or 'namespace/serviceAccount'"


def service_account_list(c: Checker, node: Node, field: str) -> None:
    """`CheckServiceAccount`: at most 16, each `sa` or `ns/sa`, no wildcard, 320 characters."""
    values = node.value
    if len(values) > 16:
        c.error(node, "may not have more than 16 values")
        return
    for i, value in enumerate(values):
        where = c.index(node, i)
        if not isinstance(value, str):
            continue
        problem = None
        if value == "":
            problem = f"empty value not allowed, found in {field}"
        elif "*" in value:
            problem = f"wildcard not allowed, found in {field}"
        elif value.count("/") > 1:
            problem = f"{_SERVICE_ACCOUNT_FORMAT}, found {value!r} in {field}"
        elif len(value) > 320:
            problem = f"value cannot exceed 320 characters, found {value!r} in {field}"
        else:
            ns, slash, sa = value.partition("/")
            if slash and not ns:
                problem = f"{_SERVICE_ACCOUNT_FORMAT}, found empty namespace {value!r} in {field}"
            elif slash and not sa:
                problem = (
                    f"{_SERVICE_ACCOUNT_FORMAT}, found empty serviceAccount {value!r} in {field}"
                )
        if problem:
            c.error(where, problem)


_LITERAL = re.compile(r"^[a-zA-Z0-9-._~%!$&'()+,;:@=]+$")


def path_template(text: str) -> str | None:
    """`CheckValidPathTemplate`: `{*}` and `{**}` only as whole segments, `{**}` last, and
    the other segments of a template plain URL characters."""
    is_template = "{*}" in text or "{**}" in text
    seen_any = False
    for glob in text.strip("/").split("/"):
        if glob in ("{*}", "{**}"):
            if seen_any:
                return f"invalid or unsupported path {text}: {{**}} is not the last operator"
            seen_any = glob == "{**}"
            continue
        if "{" in glob or "}" in glob:
            return (
                f"invalid or unsupported path {text}: contains '{{' or '}}' beyond a supported "
                "path template"
            )
        if is_template and not _LITERAL.match(glob):
            return f"invalid or unsupported path {text}: segment {glob!r} is not a valid literal"
    return None


# --- AuthorizationPolicy -----------------------------------------------------------------------

_SOURCE_FIELDS: dict[str, tuple[StrCheck, ...]] = {
    "principals": (_non_empty("Principals"),),
    "notPrincipals": (_non_empty("NotPrincipals"),),
    "requestPrincipals": (_non_empty("RequestPrincipals"),),
    "notRequestPrincipals": (_non_empty("NotRequestPrincipals"),),
    "namespaces": (_non_empty("Namespaces"),),
    "notNamespaces": (_non_empty("NotNamespaces"),),
    "ipBlocks": (_non_empty("IpBlocks"), ip_or_cidr),
    "notIpBlocks": (_non_empty("NotIpBlocks"), ip_or_cidr),
    "remoteIpBlocks": (_non_empty("RemoteIpBlocks"), ip_or_cidr),
    "notRemoteIpBlocks": (_non_empty("NotRemoteIpBlocks"), ip_or_cidr),
}
_OPERATION_FIELDS: dict[str, tuple[StrCheck, ...]] = {
    "hosts": (_non_empty("Hosts"),),
    "notHosts": (_non_empty("NotHosts"),),
    "ports": (_non_empty("Ports"), port_value),
    "notPorts": (_non_empty("NotPorts"), port_value),
    "methods": (_non_empty("Methods"),),
    "notMethods": (_non_empty("NotMethods"),),
    "paths": (_non_empty("Paths"), path_template),
    "notPaths": (_non_empty("NotPaths"), path_template),
}


def _source(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if not any(f.value for f in fields.values()):
        c.error(node, "`from.source` must not be empty")
        return
    for key in ("serviceAccounts", "notServiceAccounts"):
        if key in fields:
            service_account_list(c, fields[key], key[0].upper() + key[1:])
    accounts = [
        k for k in ("serviceAccounts", "notServiceAccounts") if fields.get(k, Node([], "")).value
    ]
    others = [
        k
        for k in ("principals", "notPrincipals", "namespaces", "notNamespaces")
        if fields.get(k, Node([], "")).value
    ]
    if accounts and others:
        c.error(fields[accounts[0]], "cannot set serviceAccounts with namespaces or principals")
    for key in ("principals", "notPrincipals"):
        for i, value in enumerate(fields[key].value if key in fields else ()):
            hint = principal_hint(value) if isinstance(value, str) else None
            if hint:
                c.warn(c.index(fields[key], i), hint)


def _operation(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if not any(f.value for f in fields.values()):
        c.error(node, "`to.operation` must not be empty")


SOURCE = obj(
    {
        **{k: strings(*checks) for k, checks in _SOURCE_FIELDS.items()},
        "serviceAccounts": ListOf(STR),
        "notServiceAccounts": ListOf(STR),
    },
    hooks=(_source,),
)
OPERATION = obj(
    {k: strings(*checks) for k, checks in _OPERATION_FIELDS.items()},
    hooks=(_operation,),
)

# L4 `when` keys (ztunnel evaluates them); every other key of a policy ztunnel enforces is an
# HTTP attribute
L4_CONDITIONS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
)


def _map_key(key: str) -> str | None:
    """`validateMapKey`: `a[b]`."""
    open_ = key.find("[")
    if key.endswith("]") and 0 < open_ < len(key) - 2:
        return None
    return f"bad key ({key}): should have format a[b]"


def attribute_problem(key: str, values: list[Any]) -> str | None:
    """`ValidateAttribute`: what is wrong with a condition's values, or with its key."""
    for value in values:
        if value == "":
            return f"empty value not allowed, found in {key}"
    if key.startswith(
        (
            "request.headers",
            "request.experimental.inline.headers",
            "request.auth.claims",
            "experimental.envoy.filters.",
        )
    ):
        return _map_key(key)
    if key in ("source.ip", "remote.ip", "destination.ip"):
        return next((p for p in map(ip_or_cidr, values) if p), None)
    if key == "destination.port":
        return next((p for p in map(port_value, values) if p), None)
    if key in (
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "connection.sni",
        "source.serviceAccount",
    ):
        return None
    if key == "destination.namespace":
        return f"attribute {key} is replaced by the metadata.namespace"
    if key.startswith("destination.labels"):
        return f"attribute {key} is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"deprecated attribute {key}: only supported in v1alpha1"
    return f"unknown attribute: {key}"


def _condition(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    key = fields["key"].value if "key" in fields else ""
    if key == "":
        c.error(node, "`key` must not be empty")
        return
    values = fields["values"].value if "values" in fields else []
    not_values = fields["notValues"].value if "notValues" in fields else []
    if not values and not not_values:
        c.error(node, f"at least one of `values` or `notValues` must be set for key {key}")
        return
    for name, field in (("value", "values"), ("notValue", "notValues")):
        if field not in fields:
            continue
        problem = attribute_problem(key, fields[field].value)
        if problem is None and key == "source.serviceAccount":
            service_account_list(c, fields[field], key)
        elif problem is not None:
            c.error(fields[field], f"invalid `{name}` for `key` {key}: {problem}")


CONDITION = obj(
    {"key": STR, "values": strings(), "notValues": strings()},
    hooks=(_condition,),
)


def _rule(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    for key in ("from", "to"):
        if key in fields and fields[key].value == []:
            c.error(fields[key], f"`{key}` must not be empty")


RULE = obj(
    {
        "from": ListOf(obj({"source": SOURCE}, required=("source",))),
        "to": ListOf(obj({"operation": OPERATION}, required=("operation",))),
        "when": ListOf(CONDITION),
    },
    hooks=(_rule,),
)

POLICY_TARGET_REF = obj(
    {"group": STR, "kind": STR, "name": STR, "namespace": STR, "sectionName": STR},
    required=("kind", "name"),
)


def _selector(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    """`validateWorkloadSelector`: no empty key, no wildcard; no labels is only a warning."""
    labels = fields["matchLabels"].value if "matchLabels" in fields else {}
    for k, v in labels.items():
        pair = f"{k}={v}"
        where = c.child(fields["matchLabels"], k)
        if k == "":
            c.error(where, f"empty key is not supported in selector: {pair!r}")
        if "*" in str(k) or "*" in str(v):
            c.error(where, f"wildcard is not supported in selector: {pair!r}")
    if not labels:
        c.warn(node, "workload selector specified without labels")


WORKLOAD_SELECTOR = obj({"matchLabels": MapOf(Str())}, hooks=(_selector,))


def http_attributes(rule: Mapping[str, Any]) -> list[str]:
    """The HTTP attributes a rule uses, named as istiod names them in its status, sorted."""
    found: set[str] = set()
    for entry in rule.get("to") or ():
        op = entry.get("operation") or {}
        found.update(k for k in _HTTP_OPERATION if op.get(k))
    for entry in rule.get("from") or ():
        src = entry.get("source") or {}
        found.update(k for k in _HTTP_SOURCE if src.get(k))
    found.update(w["key"] for w in rule.get("when") or () if w.get("key") not in L4_CONDITIONS)
    return sorted(found)


_HTTP_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_HTTP_SOURCE = ("remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals")

HTTP_RULE_STATUS = (
    "ztunnel does not support HTTP attributes (found: {found}). In ambient mode you must use a "
    "waypoint proxy to enforce HTTP rules. {consequence}"
)
HTTP_DENY_CONSEQUENCE = (
    "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more "
    "restrictive than requested."
)
HTTP_ALLOW_CONSEQUENCE = (
    "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more "
    "restrictive than requested."
)
UNSUPPORTED_ACTION_STATUS = "ztunnel does not support the {action} action"
DENY_HTTP_ONLY_WARNING = (
    "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the "
    "use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port"
)


def conversion_status(spec: Mapping[str, Any]) -> str | None:
    """istiod's status for what ztunnel enforces of a policy without targetRefs (None: all of
    it)."""
    action = spec.get("action") or "ALLOW"
    if action not in ("ALLOW", "DENY"):
        return UNSUPPORTED_ACTION_STATUS.format(action=action)
    found = sorted({a for rule in spec.get("rules") or () for a in http_attributes(rule)})
    if not found:
        return None
    consequence = HTTP_DENY_CONSEQUENCE if action == "DENY" else HTTP_ALLOW_CONSEQUENCE
    return HTTP_RULE_STATUS.format(found=", ".join(found), consequence=consequence)


def _only_http(rule: Mapping[str, Any]) -> bool:
    """The webhook's test for a DENY rule that has no TCP attribute where it has HTTP ones."""
    sources = [e.get("source") or {} for e in rule.get("from") or ()]
    operations = [e.get("operation") or {} for e in rule.get("to") or ()]
    tcp_from = any(
        src.get(k) is not None
        for src in sources
        for k in (
            "principals",
            "notPrincipals",
            "ipBlocks",
            "notIpBlocks",
            "namespaces",
            "notNamespaces",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
        )
    )
    tcp_to = any(op.get(k) is not None for op in operations for k in ("ports", "notPorts"))
    return bool((sources and not operations and not tcp_from) or (operations and not tcp_to))


def _authorization_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields and fields[k].value]
    set_ = len(targets) + ("selector" in fields)
    if set_ > 1:
        c.error(node, "only one of targetRefs or workloadSelector can be set")
    action = fields["action"].value if "action" in fields else "ALLOW"
    rules = fields.get("rules")
    if action == "CUSTOM":
        if rules is None:
            c.error(
                node,
                "CUSTOM action without `rules` is meaningless as it will never be triggered, add "
                "an empty rule `{}` if you want it be triggered for every request",
            )
        else:
            if not (fields.get("provider") and fields["provider"].value.get("name")):
                c.error(node.missing("provider"), "`provider.name` must not be empty")
            _custom_rules(c, rules)
    if "provider" in fields and action != "CUSTOM":
        c.error(
            fields["provider"], f"`provider` must not be with non CUSTOM action, found {action}"
        )
    if action == "DENY" and rules is None:
        c.error(
            node,
            "DENY action without `rules` is meaningless as it will never be triggered, add an "
            "empty rule `{}` if you want it be triggered for every request",
        )
    if action == "DENY" and rules is not None:
        for i, rule in enumerate(rules.value):
            if isinstance(rule, dict) and _only_http(rule):
                c.warn(c.index(rules, i), DENY_HTTP_ONLY_WARNING)
    if targets:
        return  # a waypoint enforces it
    status = conversion_status({k: f.value for k, f in fields.items()})
    if status is None:
        return
    if action in ("AUDIT", "CUSTOM"):
        status += (
            ": ztunnel does not enforce this policy at all; attach it to a waypoint with "
            "targetRefs to have it enforced"
        )
    c.warn(fields["action"] if action in ("AUDIT", "CUSTOM") else node, status)


def _custom_rules(c: Checker, rules: Node) -> None:
    """What a CUSTOM rule cannot use (the webhook's list)."""
    for i, rule in enumerate(rules.value):
        if not isinstance(rule, dict):
            continue
        where = c.index(rules, i)
        for entry in rule.get("from") or ():
            src = (entry or {}).get("source") or {}
            for key in (
                "namespaces",
                "notNamespaces",
                "serviceAccounts",
                "notServiceAccounts",
                "principals",
                "notPrincipals",
                "requestPrincipals",
                "notRequestPrincipals",
            ):
                if src.get(key):
                    name = "From." + key[0].upper() + key[1:]
                    c.error(where, f"{name} is currently not supported with CUSTOM action")
        for when in rule.get("when") or ():
            key = (when or {}).get("key", "")
            if key in ("source.namespace", "source.serviceAccount", "source.principal") or str(
                key
            ).startswith("request.auth."):
                c.error(where, f"{key} is currently not supported with CUSTOM action")


DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _dry_run_annotation(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    annotations = fields["metadata"].value.get("annotations") or {}
    value = annotations.get(DRY_RUN_ANNOTATION)
    if value is not None and value not in ("true", "false"):
        where = c.child(c.child(fields["metadata"], "annotations"), DRY_RUN_ANNOTATION)
        c.error(where, f"{value!r} is not one of true, false")


AUTHORIZATION_POLICY_SPEC = obj(
    {
        "selector": WORKLOAD_SELECTOR,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "rules": ListOf(RULE),
        "action": Str(choices=("ALLOW", "DENY", "AUDIT", "CUSTOM")),
        "provider": obj({"name": STR}, required=("name",)),
    },
    hooks=(_authorization_spec,),
)

# --- PeerAuthentication ------------------------------------------------------------------------

MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
MTLS = obj({"mode": Str(choices=MTLS_MODES)})


def _peer_authentication_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    selector = fields.get("selector")
    has_selector = selector is not None and bool(selector.value.get("matchLabels"))
    port_level = fields.get("portLevelMtls")
    if port_level is not None and port_level.value and not has_selector:
        c.error(port_level, "mesh/namespace peer authentication cannot have port level mTLS")
    if port_level is not None and port_level.value == {}:
        c.error(port_level, "port level mTLS, if defined, must have at least one element")
    modes = [(fields["mtls"], fields["mtls"].value.get("mode"))] if "mtls" in fields else []
    if "portLevelMtls" in fields:
        modes += [
            (c.child(fields["portLevelMtls"], port), (value or {}).get("mode"))
            for port, value in fields["portLevelMtls"].value.items()
        ]
    for where, mode in modes:
        if mode == "DISABLE":
            c.warn(
                where,
                "mTLS mode DISABLE is not supported in ambient mode: it is treated as "
                "PERMISSIVE (plaintext accepted, HBONE still used between meshed pods)",
            )


PEER_AUTHENTICATION_SPEC = obj(
    {
        "selector": WORKLOAD_SELECTOR,
        "mtls": MTLS,
        "portLevelMtls": MapOf(MTLS, key=port_key),
    },
    hooks=(_peer_authentication_spec,),
)

# --- RequestAuthentication ---------------------------------------------------------------------

# istiod's check of header names in a JWT rule.
_HEADER_NAME = re.compile(r"^[-_A-Za-z0-9]+$")


def _header_name(text: str) -> str | None:
    if not _HEADER_NAME.match(text):
        return f"{text!r} is not a valid HTTP header name (letters, digits, '-' and '_')"
    return None


def jwks_uri(text: str) -> str | None:
    """istiod's `ParseJwksURI`: an http or https URL with a host (and a valid port)."""
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as e:
        return f"invalid jwksUri {text!r}: {e}"
    if url.scheme not in ("http", "https"):
        return f"invalid jwksUri {text!r}: the scheme must be http or https"
    if not url.hostname:
        return f"invalid jwksUri {text!r}: no host"
    if port == 0:
        return f"invalid jwksUri {text!r}: port 0"
    return None


def jwks_problem(text: str) -> str | None:
    """Why a JSON Web Key Set cannot be used (None: it has at least one usable key)."""
    try:
        parse_jwks(text)
    except JwtError as e:
        return f"jwks parse error: {e}"
    return None


def _timeout(text: str) -> str | None:
    # Imported here: routing.py wraps this group's kinds, so a module-level import would cycle.
    from ztunnel_py.controlplane.validation.routing import parse_duration

    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        return f"{text!r} is not a positive duration (e.g. 5s, 500ms)"
    return None


def _jwt_rule(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    if "jwks" in fields and "jwksUri" in fields:
        c.warn(fields["jwksUri"], "ignored: the inline jwks is used")


JWT_RULE = obj(
    {
        "issuer": Str(checks=(_no_empty,)),
        "audiences": strings(_no_empty),
        "jwksUri": Str(checks=(jwks_uri,)),
        "jwks": Str(checks=(jwks_problem,)),
        "fromHeaders": ListOf(
            obj({"name": Str(checks=(_no_empty,)), "prefix": STR}, required=("name",))
        ),
        "fromParams": strings(_no_empty),
        "fromCookies": strings(_no_empty),
        "outputPayloadToHeader": Str(checks=(_header_name,)),
        "forwardOriginalToken": BOOL,
        "outputClaimToHeaders": ListOf(
            obj(
                {"header": Str(checks=(_header_name,)), "claim": Str(checks=(_no_empty,))},
                required=("header", "claim"),
            ),
            unique_by=lambda item: str(item["header"]).lower(),
            unique_what="header",
        ),
        "timeout": Str(checks=(_timeout,)),
        "spaceDelimitedClaims": strings(_no_empty),
    },
    required=("issuer",),
    hooks=(_jwt_rule,),
)


def _request_authentication_spec(c: Checker, node: Node, fields: Mapping[str, Node]) -> None:
    targets = [fields[k] for k in ("targetRef", "targetRefs") if k in fields]
    if "selector" in fields and targets:
        c.error(fields["selector"], "selector and targetRef(s) are mutually exclusive")
        return
    if not targets:
        c.warn(
            node,
            "not applied: ztunnel cannot verify JWTs, and waypoints only apply "
            "RequestAuthentications that target them (targetRefs to their Gateway or a Service "
            "they serve)",
        )


REQUEST_AUTHENTICATION_SPEC = obj(
    {
        "selector": SELECTOR_MATCH_LABELS,
        "targetRef": POLICY_TARGET_REF,
        "targetRefs": ListOf(POLICY_TARGET_REF),
        "jwtRules": ListOf(JWT_RULE),
    },
    hooks=(_request_authentication_spec,),
)

KINDS: tuple[KindInfo, ...] = (
    custom_resource(
        "AuthorizationPolicy",
        API_VERSIONS,
        AUTHORIZATION_POLICY_SPEC,
        spec_required=False,
        hooks=(_dry_run_annotation,),
    ),
    custom_resource(
        "PeerAuthentication", API_VERSIONS, PEER_AUTHENTICATION_SPEC, spec_required=False
    ),
    custom_resource(
        "RequestAuthentication", API_VERSIONS, REQUEST_AUTHENTICATION_SPEC, spec_required=False
    ),
)
