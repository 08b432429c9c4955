"""The Callers layer in-process: what scope each request runs with, and what it strips."""

from __future__ import annotations

from collections.abc import MutableMapping
from ipaddress import ip_network
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.access.identity import AuthError, Caller
from flowwatch_gateway.access.policy import OPEN_POLICY, Policy
from flowwatch_gateway.access.proxy_identity import ProxyIdentity
from flowwatch_gateway.access.scope import Access
from flowwatch_gateway.api.context import CALLER_SCOPE
from flowwatch_gateway.serving.callers import Callers

Scope = MutableMapping[str, Any]
POLICY = Policy.parse(
    "bindings:\n  - role: operator\n    subjects: ['user:alice']\nanonymous: none\n"
)
PROXY = "10.0.0.5"


class Seen:
    """The inner app: remembers the scope it ran with and the headers it got."""

    def __init__(self) -> None:
        self.scope: object = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent: list[MutableMapping[str, Any]] = []

    async def app(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scope = CALLER_SCOPE.get()
        self.headers = list(scope["headers"])

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)


def _request(path: str, peer: str, *headers: tuple[bytes, bytes]) -> Scope:
    return {"type": "http", "path": path, "headers": list(headers), "client": (peer, 1234)}


class _Tokens:
    async def verify(self, token: str) -> Caller:
        if token == "down":
            raise AuthError("the token issuer's keys are not available yet", retryable=True)
        if token != "alice-token":
            raise AuthError("the token has expired")
        return Caller(user="alice", source="oidc")


def _callers(seen: Seen, **kwargs: Any) -> Callers:
    return Callers(seen.app, policy=lambda: POLICY, **kwargs)


@pytest.mark.anyio
async def test_identity_headers_from_an_untrusted_peer_are_removed_and_not_believed() -> None:
    seen = Seen()
    layer = _callers(seen, proxy=ProxyIdentity([ip_network(f"{PROXY}/32")]))
    forged = (b"x-forwarded-user", b"alice")
    await layer(
        _request("/x.S/M", "10.0.0.9", forged, (b"x-forwarded-for", PROXY.encode())),
        None,
        seen.send,
    )
    assert forged not in seen.headers
    assert isinstance(seen.scope, ConnectError) and seen.scope.code == Code.UNAUTHENTICATED
    await layer(_request("/x.S/M", PROXY, forged), None, seen.send)
    assert isinstance(seen.scope, Access) and seen.scope.caller.user == "alice"
    assert seen.scope.may_act("orders")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "code"),
    [("expired", Code.UNAUTHENTICATED), ("down", Code.UNAVAILABLE), ("alice-token", None)],
)
async def test_a_token_decides_the_scope(token: str, code: Code | None) -> None:
    seen = Seen()
    layer = _callers(seen, oidc=_Tokens())  # type: ignore[arg-type]
    await layer(
        _request("/x.S/M", "10.0.0.9", (b"authorization", f"Bearer {token}".encode())),
        None,
        seen.send,
    )
    if code is None:
        assert isinstance(seen.scope, Access) and seen.scope.who == "user:alice"
    else:
        assert isinstance(seen.scope, ConnectError) and seen.scope.code == code


@pytest.mark.anyio
async def test_a_caller_with_no_role_is_permission_denied_naming_it() -> None:
    seen = Seen()
    layer = _callers(seen, proxy=ProxyIdentity([ip_network(f"{PROXY}/32")]))
    await layer(_request("/x.S/M", PROXY, (b"x-forwarded-user", b"mallory")), None, seen.send)
    assert isinstance(seen.scope, ConnectError)
    assert seen.scope.code == Code.PERMISSION_DENIED and "user:mallory" in seen.scope.message


@pytest.mark.anyio
async def test_status_is_answered_here_for_non_admins_and_probes_pass_untouched() -> None:
    seen = Seen()
    layer = _callers(seen)
    await layer(_request("/status", "10.0.0.9"), None, seen.send)
    assert seen.sent[0]["status"] == 401 and seen.scope is None
    await layer(_request("/readyz", "10.0.0.9"), None, seen.send)
    assert seen.scope is None  # ran, with no scope set


@pytest.mark.anyio
async def test_without_a_policy_everyone_may_do_everything_as_before() -> None:
    seen = Seen()
    layer = Callers(seen.app, policy=lambda: OPEN_POLICY)
    await layer(_request("/x.S/M", "10.0.0.9", (b"x-request-id", b"r-1")), None, seen.send)
    assert isinstance(seen.scope, Access)
    assert seen.scope.may_act("anything") and seen.scope.admin
    assert seen.scope.request_id == "r-1" and seen.scope.peer == "10.0.0.9"
