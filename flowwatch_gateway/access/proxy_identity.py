"""The caller an auth proxy in front of the gateway (oauth2-proxy and the like) names.

Such a proxy signs the user in and adds `X-Forwarded-User`/`-Email`/`-Groups` (or, in
its `auth_request` mode, `X-Auth-Request-User`/`-Email`/`-Groups`) to each request it
passes on. Anyone can send those headers, so they are believed only from a peer
address inside the configured trusted networks, and must be removed (`strip`) from
every other request before anything reads or forwards them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final

from flowwatch_gateway.access.identity import AuthError, Caller

__all__ = ["IDENTITY_HEADERS", "ProxyIdentity"]

# (user, email, groups) header names of each convention, in the order tried.
_FAMILIES: Final = (
    (b"x-forwarded-user", b"x-forwarded-email", b"x-forwarded-groups"),
    (b"x-auth-request-user", b"x-auth-request-email", b"x-auth-request-groups"),
)
IDENTITY_HEADERS: Final[frozenset[bytes]] = frozenset(
    {name for family in _FAMILIES for name in family}
    # Also set by such proxies; never read here, but no client may pass them off as
    # the proxy's either.
    | {
        b"x-forwarded-preferred-username",
        b"x-auth-request-preferred-username",
        b"x-forwarded-access-token",
        b"x-auth-request-access-token",
    }
)
"""Lower-case header names that carry an auth proxy's word about the caller."""


class ProxyIdentity:
    """Reads the identity headers of requests that come from a trusted proxy."""

    def __init__(self, trusted: Sequence[IPv4Network | IPv6Network]) -> None:
        self._trusted = tuple(trusted)

    def trusts(self, peer_host: str | None) -> bool:
        """Whether `peer_host` (the connection's remote address) is a trusted proxy."""
        address = _address(peer_host)
        if address is None:
            return False
        # An IPv4 peer reached over an IPv6 socket shows as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
        return any(
            candidate in network
            for network in self._trusted
            for candidate in (address, mapped)
            if candidate is not None and candidate.version == network.version
        )

    def caller(
        self, peer_host: str | None, headers: Sequence[tuple[bytes, bytes]]
    ) -> Caller | None:
        """The proxy's caller, or None (untrusted peer, or no user header).

        Raises AuthError when a trusted proxy's headers contradict each other (the same
        header twice with different values) or are not readable text.
        """
        if not self.trusts(peer_host):
            return None
        values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            lowered = name.lower()
            if lowered in IDENTITY_HEADERS:
                values.setdefault(lowered, []).append(value)
        for user_header, email_header, groups_header in _FAMILIES:
            if user_header not in values:
                continue
            # One convention at a time: a user from one and groups from the other
            # would be a caller neither header set describes.
            user = _single(values[user_header], user_header)
            if not user:
                return None
            email = _single(values.get(email_header, []), email_header) or None
            groups = frozenset(
                group.strip()
                for value in values.get(groups_header, [])
                for group in _text(value, groups_header).split(",")
                if group.strip()
            )
            return Caller(user=user, groups=groups, source="proxy", email=email)
        return None

    def strip(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """`headers` without the identity headers (a new list)."""
        return [(name, value) for name, value in headers if name.lower() not in IDENTITY_HEADERS]


def _address(peer_host: str | None) -> IPv4Address | IPv6Address | None:
    if not peer_host:
        return None
    host = peer_host[1:-1] if peer_host.startswith("[") and peer_host.endswith("]") else peer_host
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None  # a Unix socket path or a name: not an address a network holds


def _text(value: bytes, header: bytes) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuthError(f"the auth proxy's {header.decode()} header is not UTF-8") from exc
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise AuthError(f"the auth proxy's {header.decode()} header has control characters")
    return text.strip()


def _single(values: list[bytes], header: bytes) -> str:
    texts = {_text(value, header) for value in values}
    if len(texts) > 1:
        raise AuthError(f"the auth proxy sent {header.decode()} twice with different values")
    return texts.pop() if texts else ""
