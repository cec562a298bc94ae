"""The built-in HTTP filters, without sockets: L7 authorization as Envoy's RBAC answers it, trace
context and request ids, fault injection, and the example user filter loaded as a package."""

from __future__ import annotations

import random
import uuid

import pytest
import trio
import trio.testing

from ztunnel_py.http.filter import Downstream, FilterError, LocalReply, RequestContext, load_filter
from ztunnel_py.http.filters.authz import DENIED_BODY, AuthorizationFilter
from ztunnel_py.http.filters.fault import ABORT_BODY, FaultFilter
from ztunnel_py.http.filters.tracing import TracingFilter, parse_traceparent, request_id
from ztunnel_py.http.message import Headers, RequestHead
from ztunnel_py.model import Action, Authorization, Identity, Match, PolicyScope, StringMatch
from ztunnel_py.model import StringMatchKind as K
from ztunnel_py.model.http import Fault, Route
from ztunnel_py.model.policy import HeaderCondition
from ztunnel_py.model.telemetry import TracingConfig
from ztunnel_py.policy.rbac import PolicySet

WEB = Identity("cluster.local", "apps", "web")


def request(method: str = "GET", path: str = "/", **headers: str) -> RequestContext:
    head = RequestHead(method, path, "echo.apps:80", Headers(headers.items()))
    return RequestContext(head, Downstream(WEB, "10.244.1.11:40000", "10.96.0.10:80"))


def policy(name: str, action: Action, *matches: Match) -> Authorization:
    rules = tuple(((m,),) for m in matches)
    return Authorization(name, "apps", PolicyScope.WORKLOAD_SELECTOR, action, rules)


def s(kind: K, value: str = "") -> StringMatch:
    return StringMatch(kind, value)


def run(coro: object) -> object:
    async def main() -> object:
        return await coro  # type: ignore[misc]

    return trio.run(main)


def decide(policies: list[Authorization], ctx: RequestContext) -> LocalReply | None:
    f = AuthorizationFilter(lambda _ctx: PolicySet(policies))
    reply = run(f.on_request_headers(ctx))
    assert reply is None or isinstance(reply, LocalReply)
    return reply


def test_a_deny_on_delete_answers_403_rbac_access_denied_and_names_the_policy() -> None:
    deny = policy("no-delete", Action.DENY, Match(methods=(s(K.EXACT, "DELETE"),)))
    reply = decide([deny], request("DELETE"))
    assert reply is not None and reply.status == 403 and reply.body == DENIED_BODY
    assert reply.details == "rbac_access_denied_matched_policy[ns[apps]-policy[no-delete]]"
    assert reply.flag == ""  # Envoy's RBAC sets no response flag
    assert decide([deny], request("GET")) is None


def test_an_allow_on_a_path_prefix_admits_only_those_paths() -> None:
    allow = policy("public", Action.ALLOW, Match(paths=(s(K.PREFIX, "/public/"),)))
    assert decide([allow], request(path="/public/index.html?x=1")) is None
    reply = decide([allow], request(path="/private"))
    assert reply is not None and reply.details == "rbac_access_denied_matched_policy[none]"


def test_hosts_match_without_case_and_headers_by_their_joined_values() -> None:
    by_host = policy("h", Action.ALLOW, Match(hosts=(s(K.PREFIX, "ECHO.apps"),)))
    assert decide([by_host], request()) is None
    header = HeaderCondition("X-Env", (s(K.EXACT, "prod,canary"),))
    by_header = policy("x", Action.DENY, Match(headers=(header,)))
    ctx = request()
    ctx.request.headers.add("x-env", "prod")
    ctx.request.headers.add("x-env", "canary")
    assert decide([by_header], ctx) is not None


def test_principals_come_from_the_clients_certificate() -> None:
    allow = policy(
        "web-only", Action.ALLOW, Match(principals=(s(K.EXACT, "cluster.local/ns/apps/sa/web"),))
    )
    assert decide([allow], request()) is None
    anonymous = request()
    anonymous.downstream.peer_identity = None
    assert decide([allow], anonymous) is not None


def test_audit_policies_never_decide() -> None:
    audit = policy("audit", Action.AUDIT, Match(methods=(s(K.EXACT, "GET"),)))
    assert decide([audit], request()) is None


# --- tracing ----------------------------------------------------------------------------------


def test_a_request_without_trace_context_starts_one_with_b3_twins_and_a_request_id() -> None:
    ctx = request()
    run(TracingFilter(TracingConfig(sampling=100.0)).on_request_headers(ctx))
    h = ctx.request.headers
    parsed = parse_traceparent(h.get("traceparent") or "")
    assert parsed is not None
    trace, span, sampled = parsed
    assert sampled and h.get("x-b3-traceid") == trace and h.get("x-b3-spanid") == span
    assert h.get("x-b3-sampled") == "1" and "x-b3-parentspanid" not in h
    assert len(h.get("x-request-id") or "") == 36


def test_request_ids_are_uuid4s_as_the_standard_library_writes_them() -> None:
    rng = random.Random(7)
    for raw in [bytes(16), b"\xff" * 16] + [rng.randbytes(16) for _ in range(500)]:
        assert request_id(raw) == str(uuid.UUID(bytes=raw, version=4))


def test_each_request_gets_its_own_ids_and_sampling_follows_the_percentage() -> None:
    seen: set[str] = set()
    sampled = 0
    tracing = TracingFilter(TracingConfig(sampling=25.0))
    for _ in range(2000):
        ctx = request()
        run(tracing.on_request_headers(ctx))
        h = ctx.request.headers
        seen |= {
            h.get("x-request-id") or "",
            h.get("x-b3-traceid") or "",
            h.get("x-b3-spanid") or "",
        }
        sampled += h.get("x-b3-sampled") == "1"
    assert len(seen) == 3 * 2000  # no id repeats, none is shared between the three kinds
    assert 400 < sampled < 600  # 25% of 2000 (binomial sd ~19)


def test_an_incoming_traceparent_is_continued_with_a_new_span_and_tracestate_kept() -> None:
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = request(traceparent=incoming, tracestate="congo=t61rcWkgMzE", **{"x-request-id": "r1"})
    run(TracingFilter(TracingConfig(sampling=0.0)).on_request_headers(ctx))
    h = ctx.request.headers
    trace, span, sampled = parse_traceparent(h.get("traceparent") or "") or ("", "", False)
    assert trace == "0af7651916cd43dd8448eb211c80319c" and span != "b7ad6b7169203331"
    assert sampled  # the caller's decision wins over our 0% sampling
    assert h.get("x-b3-parentspanid") == "b7ad6b7169203331"
    assert h.get("tracestate") == "congo=t61rcWkgMzE" and h.get("x-request-id") == "r1"


def test_b3_only_requests_continue_in_w3c_too() -> None:
    ctx = request(
        **{
            "x-b3-traceid": "463ac35c9f6413ad",
            "x-b3-spanid": "a2fb4a1d1a96d312",
            "x-b3-sampled": "0",
        }
    )
    run(TracingFilter(TracingConfig(sampling=100.0)).on_request_headers(ctx))
    parsed = parse_traceparent(ctx.request.headers.get("traceparent") or "")
    assert parsed is not None and parsed[0] == "0000000000000000463ac35c9f6413ad" and not parsed[2]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-XYZ7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_invalid_traceparents_are_ignored(bad: str) -> None:
    assert parse_traceparent(bad) is None


# --- faults -----------------------------------------------------------------------------------


def faulted(fault: Fault, rand: float) -> tuple[LocalReply | None, RequestContext, float]:
    ctx = request()
    ctx.route = Route("r", fault=fault)
    f = FaultFilter(rand=lambda: rand)

    async def main() -> tuple[LocalReply | None, float]:
        start = trio.current_time()
        reply = await f.on_request_headers(ctx)
        return reply, trio.current_time() - start

    reply, waited = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return reply, ctx, waited


def test_a_fault_delays_then_aborts_the_chosen_share() -> None:
    fault = Fault(delay_percent=50, delay=2.0, abort_percent=10, abort_status=503)
    reply, ctx, waited = faulted(fault, 0.05)  # 5%: both hit
    assert waited == pytest.approx(2.0) and reply is not None
    assert (reply.status, reply.body, reply.flag) == (503, ABORT_BODY, "FI")
    assert ctx.response_flags == ["DI"]
    reply, ctx, waited = faulted(fault, 0.4)  # 40%: delay only
    assert reply is None and waited == pytest.approx(2.0)
    reply, ctx, waited = faulted(fault, 0.9)  # neither
    assert reply is None and waited == 0 and ctx.response_flags == []


def test_fractional_percentages_hit_their_share() -> None:
    fault = Fault(delay_percent=0.1, delay=0.1)
    assert faulted(fault, 0.0009)[1].response_flags == ["DI"]  # under 0.1 %
    assert faulted(fault, 0.0011)[1].response_flags == []
    f = FaultFilter(rand=random.Random(14).random)

    async def main() -> int:
        hits = 0
        for _ in range(20_000):
            ctx = request()
            ctx.route = Route("r", fault=fault)
            await f.on_request_headers(ctx)
            hits += ctx.response_flags == ["DI"]
        return hits

    hits = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert 8 <= hits <= 35  # 20 expected


def test_a_grpc_abort_carries_its_grpc_status() -> None:
    reply, _, _ = faulted(Fault(abort_percent=100, abort_grpc_status=14), 0.0)
    assert reply is not None and reply.grpc_status == 14 and reply.flag == "FI"


# --- user filters -----------------------------------------------------------------------------


def test_an_unknown_filter_is_a_clear_error() -> None:
    with pytest.raises(FilterError, match="no HTTP filter named 'nope' is installed"):
        load_filter("nope", {})


def test_a_builtin_that_refuses_its_config_says_so() -> None:
    def strict(config: object) -> TracingFilter:
        raise ValueError("sampling must be a number")

    with pytest.raises(FilterError, match="rejected its configuration: sampling must be"):
        load_filter("tracing", {}, builtins={"tracing": strict})
