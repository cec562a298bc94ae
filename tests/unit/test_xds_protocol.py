"""Delta xDS bookkeeping without sockets: the server and client cores, alone and back to back."""

from __future__ import annotations

import pytest

from ztunnel_py.protocol.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    MAX_PENDING_NONCES,
    WORKLOAD_TYPES,
    ClientStream,
    Delta,
    Request,
    ServerStream,
    XdsProtocolError,
    nack_message,
    parse_nack,
)

V1 = {"a": "1", "b": "1", "c": "1"}


def server() -> ServerStream:
    return ServerStream(WORKLOAD_TYPES)


def first(s: ServerStream, versions: dict[str, str], request: Request | None = None) -> Delta:
    delta = s.receive(request or Request(ADDRESS_TYPE), versions, "v1")
    assert delta is not None
    return delta


def test_first_wildcard_request_gets_everything_and_is_always_answered() -> None:
    s = server()
    delta = first(s, V1)
    assert sorted(delta.upserts) == ["a", "b", "c"]
    assert delta.removed == ()
    assert delta.system_version == "v1"
    empty = s.receive(Request(AUTHORIZATION_TYPE), {}, "v1")
    assert empty is not None and empty.upserts == () and empty.removed == ()
    assert empty.nonce != delta.nonce


def test_initial_versions_spare_unchanged_resources_and_remove_unknown_ones() -> None:
    s = server()
    known = {"a": "1", "b": "0", "gone": "1"}
    delta = first(s, V1, Request(ADDRESS_TYPE, initial_versions=known))
    assert sorted(delta.upserts) == ["b", "c"]
    assert delta.removed == ("gone",)


def test_push_sends_only_changes_and_removals() -> None:
    s = server()
    first(s, V1)
    assert s.push(ADDRESS_TYPE, V1, "v1") is None
    delta = s.push(ADDRESS_TYPE, {"a": "1", "b": "2", "d": "1"}, "v2")
    assert delta is not None
    assert sorted(delta.upserts) == ["b", "d"]
    assert delta.removed == ("c",)
    assert s.push(AUTHORIZATION_TYPE, {"p": "1"}, "v2") is None  # not subscribed


def test_ack_and_nack_are_tracked_with_per_resource_reasons() -> None:
    s = server()
    d1 = first(s, V1)
    assert s.receive(Request(ADDRESS_TYPE, response_nonce=d1.nonce), V1, "v1") is None
    state = s.describe()[ADDRESS_TYPE]
    assert state["ackedNonce"] == d1.nonce and state["ackedVersion"] == "v1"

    d2 = s.push(ADDRESS_TYPE, {**V1, "b": "2", "c": "2"}, "v2")
    assert d2 is not None
    error = nack_message({"b": "bad address; really", "zzz": "not one of ours"})
    s.receive(Request(ADDRESS_TYPE, response_nonce=d2.nonce, error=error), V1, "v2")
    nack = s.last_nack(ADDRESS_TYPE)
    assert nack is not None and nack.nonce == d2.nonce and nack.system_version == "v2"
    assert nack.reasons["b"] == "bad address"
    assert "zzz: not one of ours" in nack.reasons[""]
    assert s.rejected() == [(ADDRESS_TYPE, "b", "2", "bad address")]
    # the ACKed version does not move on a NACK
    assert s.describe()[ADDRESS_TYPE]["ackedVersion"] == "v1"

    d3 = s.push(ADDRESS_TYPE, {**V1, "b": "3", "c": "2"}, "v3")
    assert d3 is not None and d3.upserts == ("b",)
    s.receive(Request(ADDRESS_TYPE, response_nonce=d3.nonce), V1, "v3")
    assert s.rejected() == []


def test_a_removed_resource_is_no_longer_listed_as_rejected() -> None:
    s = server()
    d1 = first(s, V1)
    s.receive(Request(ADDRESS_TYPE, response_nonce=d1.nonce, error="a: broken"), V1, "v1")
    assert [r[1] for r in s.rejected()] == ["a"]
    s.push(ADDRESS_TYPE, {"b": "1", "c": "1"}, "v2")
    assert s.rejected() == []


def test_unknown_or_stale_nonces_are_ignored() -> None:
    s = server()
    first(s, V1)
    s.receive(Request(ADDRESS_TYPE, response_nonce="never-sent", error="x: y"), V1, "v1")
    assert s.last_nack(ADDRESS_TYPE) is None
    assert s.describe()[ADDRESS_TYPE]["acks"] == 0


def test_pending_nonces_of_a_client_that_never_acks_are_bounded() -> None:
    s = server()
    first(s, V1)
    for i in range(3 * MAX_PENDING_NONCES):
        s.push(ADDRESS_TYPE, {"a": str(i)}, f"v{i}")
    pending = s.describe()[ADDRESS_TYPE]["pendingNonces"]
    assert isinstance(pending, list) and len(pending) == MAX_PENDING_NONCES


def test_an_ack_answers_every_older_nonce() -> None:
    s = server()
    d1 = first(s, V1)
    d2 = s.push(ADDRESS_TYPE, {"a": "2"}, "v2")
    assert d2 is not None
    s.receive(Request(ADDRESS_TYPE, response_nonce=d2.nonce), V1, "v2")
    assert s.describe()[ADDRESS_TYPE]["pendingNonces"] == []
    # a late ACK of the older nonce changes nothing
    s.receive(Request(ADDRESS_TYPE, response_nonce=d1.nonce), V1, "v2")
    assert s.describe()[ADDRESS_TYPE]["ackedVersion"] == "v2"


def test_on_demand_subscriptions() -> None:
    s = server()
    # ztunnel's on-demand start: "*" subscribed and unsubscribed means nothing yet
    nothing = first(s, V1, Request(ADDRESS_TYPE, subscribe=("*",), unsubscribe=("*",)))
    assert nothing.upserts == () and nothing.removed == ()
    delta = s.receive(Request(ADDRESS_TYPE, subscribe=("a", "missing")), V1, "v1")
    assert delta is not None
    assert delta.upserts == ("a",)
    assert delta.removed == ("missing",)  # delta xDS: an unknown name is answered as removed
    # only subscribed names are pushed
    pushed = s.push(ADDRESS_TYPE, {"a": "2", "b": "2", "c": "2"}, "v2")
    assert pushed is not None and pushed.upserts == ("a",)
    assert s.receive(Request(ADDRESS_TYPE, unsubscribe=("a",)), V1, "v2") is None
    assert s.push(ADDRESS_TYPE, {"a": "3"}, "v3") is None


def test_a_type_the_server_does_not_serve_is_a_protocol_error() -> None:
    with pytest.raises(XdsProtocolError, match="not served"):
        server().receive(Request("type.googleapis.com/envoy.config.cluster.v3.Cluster"), {}, "")


def test_parse_nack_keeps_text_that_names_no_resource() -> None:
    assert parse_nack("plain failure", ["a"]) == {"": "plain failure"}
    assert parse_nack("a: x; b: y", ["a", "b"]) == {"a": "x", "b": "y"}


def test_client_acks_nacks_and_remembers_versions() -> None:
    c = ClientStream()
    assert [(r.type_url, dict(r.initial_versions)) for r in c.initial_requests()] == [
        (ADDRESS_TYPE, {}),
        (AUTHORIZATION_TYPE, {}),
    ]
    ack = c.response(ADDRESS_TYPE, "n1", {"a": "1", "b": "1"}, (), {})
    assert ack == Request(ADDRESS_TYPE, response_nonce="n1")
    assert c.acked(ADDRESS_TYPE) and not c.acked(AUTHORIZATION_TYPE)

    nack = c.response(ADDRESS_TYPE, "n2", {"c": "1"}, ("a",), {"b": "bad", "d": "worse"})
    assert nack.is_nack and nack.response_nonce == "n2"
    assert nack.error == "b: bad; d: worse"
    # rejected b keeps the version it had; d was never held
    assert c.known(ADDRESS_TYPE) == {"b": "1", "c": "1"}
    assert dict(c.initial_requests()[0].initial_versions) == {"b": "1", "c": "1"}
    with pytest.raises(XdsProtocolError):
        c.response("type.googleapis.com/other", "n3", {}, (), {})


def test_back_to_back_reconnect_resends_only_what_changed() -> None:
    """A client and a server core wired together: sync, disconnect, change, reconnect."""
    client = ClientStream([ADDRESS_TYPE])
    versions = {f"w{i}": "1" for i in range(100)}

    def sync(s: ServerStream, versions: dict[str, str]) -> Delta:
        (request,) = client.initial_requests()
        delta = s.receive(request, versions, "v")
        assert delta is not None
        answer = client.response(
            ADDRESS_TYPE, delta.nonce, {n: versions[n] for n in delta.upserts}, delta.removed, {}
        )
        assert s.receive(answer, versions, "v") is None
        return delta

    assert len(sync(ServerStream([ADDRESS_TYPE]), versions).upserts) == 100
    # the server restarts; meanwhile one resource changed and one went away
    versions["w7"] = "2"
    del versions["w9"]
    delta = sync(ServerStream([ADDRESS_TYPE]), versions)
    assert delta.upserts == ("w7",)
    assert delta.removed == ("w9",)
    assert client.known(ADDRESS_TYPE) == versions
