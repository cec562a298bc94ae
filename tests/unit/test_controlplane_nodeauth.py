"""Node tokens: issue, look up, expiry, and what is (not) stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ztunnel_py.controlplane.nodeauth import (
    AuthenticationError,
    Caller,
    NodeTokenStore,
    TokenAuthenticator,
    bearer_token,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_issued_token_authenticates_its_node(tmp_path: Path) -> None:
    store = NodeTokenStore(tmp_path / "tokens.json")
    token = store.issue("node-1", timedelta(hours=1))
    auth = TokenAuthenticator(store)
    assert auth.authenticate({"authorization": f"Bearer {token}"}) == Caller("node-1")
    assert auth.authenticate({"authorization": f"bearer   {token} "}) == Caller("node-1")


def test_only_a_hash_is_stored(tmp_path: Path) -> None:
    store = NodeTokenStore(tmp_path / "tokens.json")
    token = store.issue("node-1", timedelta(hours=1))
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text
    assert token.removeprefix("ztpy-node-") not in text
    assert (tmp_path / "tokens.json").stat().st_mode & 0o077 == 0


def test_expired_and_unknown_tokens_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    store = NodeTokenStore(tmp_path / "tokens.json", clock)
    token = store.issue("node-1", timedelta(minutes=5))
    with pytest.raises(AuthenticationError, match="unknown node token"):
        store.lookup(token + "x")
    clock.now += timedelta(minutes=5)
    with pytest.raises(AuthenticationError, match="node token for node-1 expired"):
        store.lookup(token)


def test_tokens_issued_by_another_process_are_seen(tmp_path: Path) -> None:
    server_side = NodeTokenStore(tmp_path / "tokens.json")
    with pytest.raises(AuthenticationError):
        server_side.lookup("ztpy-node-nothing")
    first = NodeTokenStore(tmp_path / "tokens.json").issue("node-1", timedelta(hours=1))
    second = NodeTokenStore(tmp_path / "tokens.json").issue("node-2", timedelta(hours=1))
    assert server_side.lookup(first) == "node-1"
    assert server_side.lookup(second) == "node-2"


def test_expired_entries_are_pruned_on_issue(tmp_path: Path) -> None:
    clock = Clock()
    store = NodeTokenStore(tmp_path / "tokens.json", clock)
    store.issue("node-1", timedelta(minutes=1))
    clock.now += timedelta(minutes=2)
    store.issue("node-2", timedelta(minutes=1))
    assert (tmp_path / "tokens.json").read_text().count('"node"') == 1


@pytest.mark.parametrize("node", ["", "-x", "a b", "x/y", "n" * 300])
def test_bad_node_names_are_refused(tmp_path: Path, node: str) -> None:
    with pytest.raises(ValueError, match="node name"):
        NodeTokenStore(tmp_path / "tokens.json").issue(node, timedelta(hours=1))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "no 'authorization' metadata"),
        ({"authorization": "Basic abc"}, "not of the form"),
        ({"authorization": "Bearer"}, "not of the form"),
    ],
)
def test_malformed_authorization_is_refused(metadata: dict[str, str], message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        bearer_token(metadata)


def test_corrupt_store_refuses_cleanly(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text("{not json")
    with pytest.raises(AuthenticationError, match="unreadable"):
        NodeTokenStore(tmp_path / "tokens.json").lookup("ztpy-node-x")
