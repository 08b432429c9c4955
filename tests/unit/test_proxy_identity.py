"""ProxyIdentity: an auth proxy's headers, believed only from trusted peers."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from flowwatch_gateway.access import IDENTITY_HEADERS, AuthError, Caller, ProxyIdentity

PROXY = ProxyIdentity([ip_network("10.0.0.0/24"), ip_network("fd00:1::/64")])

ALICE = [
    (b"x-forwarded-user", b"alice"),
    (b"x-forwarded-email", b"alice@example.org"),
    (b"x-forwarded-groups", b"ops, dev,,viewers "),
]
ALICE_CALLER = Caller(
    user="alice",
    groups=frozenset({"ops", "dev", "viewers"}),
    source="proxy",
    email="alice@example.org",
)


@pytest.mark.parametrize(
    "peer", ["10.0.0.7", "fd00:1::5", "[fd00:1::5]", "::ffff:10.0.0.7", "fd00:1::5%eth0"]
)
def test_trusted_peers(peer: str) -> None:
    assert PROXY.caller(peer, ALICE) == ALICE_CALLER


@pytest.mark.parametrize(
    "peer",
    [
        "10.0.1.7",
        "192.168.0.1",
        "fd00:2::5",
        "::ffff:10.0.1.7",
        "::10.0.0.7",  # IPv4-compatible, not IPv4-mapped
        "127.0.0.1",
        "proxy.internal",
        "/run/gateway.sock",
        "",
        None,
    ],
)
def test_untrusted_peers_name_nobody(peer: str | None) -> None:
    assert PROXY.caller(peer, ALICE) is None


def test_auth_request_headers() -> None:
    headers = [
        (b"X-Auth-Request-User", b"bob"),
        (b"X-Auth-Request-Email", b"bob@example.org"),
        (b"X-Auth-Request-Groups", b"admins"),
    ]
    assert PROXY.caller("10.0.0.1", headers) == Caller(
        user="bob", groups=frozenset({"admins"}), source="proxy", email="bob@example.org"
    )


def test_one_convention_at_a_time() -> None:
    # X-Forwarded-User wins; groups of the other convention are not mixed in.
    headers = [(b"x-forwarded-user", b"alice"), (b"x-auth-request-groups", b"admins")]
    assert PROXY.caller("10.0.0.1", headers) == Caller(user="alice", source="proxy")


def test_repeated_groups_headers_add_up() -> None:
    headers = [
        (b"x-forwarded-user", b"alice"),
        (b"x-forwarded-groups", b"a,b"),
        (b"x-forwarded-groups", b"c"),
    ]
    caller = PROXY.caller("10.0.0.1", headers)
    assert caller is not None and caller.groups == frozenset({"a", "b", "c"})


def test_no_user_header_is_no_caller() -> None:
    assert PROXY.caller("10.0.0.1", [(b"x-forwarded-groups", b"admins")]) is None
    assert PROXY.caller("10.0.0.1", [(b"x-forwarded-user", b"  ")]) is None
    assert PROXY.caller("10.0.0.1", []) is None


def test_a_user_header_repeated_with_another_value_is_refused() -> None:
    headers = [(b"x-forwarded-user", b"alice"), (b"x-forwarded-user", b"root")]
    with pytest.raises(AuthError, match="twice"):
        PROXY.caller("10.0.0.1", headers)
    same = [(b"x-forwarded-user", b"alice"), (b"x-forwarded-user", b"alice")]
    assert PROXY.caller("10.0.0.1", same) == Caller(user="alice", source="proxy")


@pytest.mark.parametrize("value", [b"al\x00ice", b"alice\x1b[2J", b"\xff\xfe"])
def test_unreadable_values_are_refused(value: bytes) -> None:
    with pytest.raises(AuthError):
        PROXY.caller("10.0.0.1", [(b"x-forwarded-user", value)])


def test_utf8_names() -> None:
    caller = PROXY.caller("10.0.0.1", [(b"x-forwarded-user", "zoë".encode())])
    assert caller is not None and caller.user == "zoë"


def test_no_trusted_networks_trusts_nobody() -> None:
    assert ProxyIdentity([]).caller("10.0.0.1", ALICE) is None


def test_strip_removes_every_identity_header_in_any_case() -> None:
    headers = [
        (b"host", b"gateway"),
        (b"X-Forwarded-User", b"root"),
        (b"x-forwarded-email", b"root@example.org"),
        (b"X-FORWARDED-GROUPS", b"admins"),
        (b"x-auth-request-user", b"root"),
        (b"x-auth-request-email", b"root@example.org"),
        (b"x-auth-request-groups", b"admins"),
        (b"x-forwarded-access-token", b"t"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"authorization", b"Bearer t"),
    ]
    stripped = PROXY.strip(headers)
    assert stripped == [
        (b"host", b"gateway"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"authorization", b"Bearer t"),
    ]
    assert len(headers) == 10  # a new list
    assert PROXY.caller("10.0.0.1", stripped) is None


def test_identity_headers_are_lower_case() -> None:
    assert all(name == name.lower() for name in IDENTITY_HEADERS)
    assert b"x-forwarded-user" in IDENTITY_HEADERS and b"x-auth-request-groups" in IDENTITY_HEADERS
