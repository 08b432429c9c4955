"""GATEWAY_ALLOWED_HOSTS: answer only requests addressed to this gateway's own names.

A gateway on localhost (or any private address) is otherwise reachable from any web
page by DNS rebinding: the page's own host name is re-pointed at 127.0.0.1, and the
browser, believing it talks to the page's origin, sends it requests and reads the
answers (CORS never applies: it is the same origin). What the browser cannot change
is the Host header (`:authority` in HTTP/2): it stays the attacker's name. Checking
it against the names the gateway is meant to be reached by closes that door.

- `AllowedHosts.parse("gateway.example.com, *.internal, localhost, [::1], 10.0.0.5")`:
  comma-separated host names, fnmatch patterns (`*`, `?`, `[...]`), IPv4 addresses and
  bracketed IPv6 literals. No ports: the host is compared without its port. Names
  are compared case-insensitively, a trailing dot is ignored. An empty list allows
  any host (the setting unset).
- `HostGuard(app, allowed)`: every request whose Host is not allowed gets
  `permission_denied` (HTTP 403 for Connect unary and plain requests, gRPC and
  Connect streaming in their own protocol, via guards.send_error), except the probes
  (`/healthz`, `/readyz`), which load balancers and kubelets call by IP.

403 rather than 421: the refusal is Connect's `permission_denied`, which Connect maps
to 403 and every client shows with its message; 421 would make some browsers retry
on another connection for nothing.

A request with no Host at all, several different ones, or one that is not a valid
host[:port] is refused whenever the list is set: none of them can be checked.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from connectrpc.code import Code
from starlette.types import ASGIApp, Receive, Scope, Send

from flowwatch_gateway.serving.guards import send_error

SETTING = "GATEWAY_ALLOWED_HOSTS"
# Called by IP by load balancers and kubelets, and they reveal nothing worth a rebinding.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

# A DNS name (letters, digits, '-', '_', dots) or an IPv4 address, then an optional port.
_NAME_WITH_PORT = re.compile(r"([A-Za-z0-9_.-]+)(?::([0-9]*))?")
# A bracketed IPv6 literal, then an optional port.
_IPV6_WITH_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]*))?")
_PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")
# Longest host shown back in a refusal (a DNS name is at most 253 characters).
_MAX_SHOWN = 253


def host_of(header: str) -> str | None:
    """The host part of a Host header value, normalised; None if it is not valid.

    Lower-cased, without port and brackets (`[::1]:8091` -> `::1`), trailing dot
    removed (`example.com.` -> `example.com`).
    """
    match = _IPV6_WITH_PORT.fullmatch(header)
    if match is not None:
        try:
            return str(ipaddress.IPv6Address(match.group(1)))
        except ValueError:
            return None
    match = _NAME_WITH_PORT.fullmatch(header)
    if match is None:
        return None
    host = match.group(1).lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or ".." in host or host.startswith("."):
        return None
    return host


@dataclass(frozen=True)
class AllowedHosts:
    """The host names and patterns a gateway answers; empty = any host."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        """From GATEWAY_ALLOWED_HOSTS' comma-separated form; ValueError naming a bad entry."""
        return cls.of(part for part in text.split(","))

    @classmethod
    def of(cls, entries: Iterable[str]) -> AllowedHosts:
        """From separate entries (e.g. config.allowed_hosts); blank ones are skipped."""
        patterns: list[str] = []
        for entry in entries:
            pattern = _normalise_pattern(entry.strip())
            if pattern is not None and pattern not in patterns:
                patterns.append(pattern)
        return cls(tuple(patterns))

    @property
    def any_host(self) -> bool:
        return not self.patterns

    def allows(self, host_header: str | None) -> bool:
        """Whether a request with this Host header (None: it had none) may be answered."""
        if self.any_host:
            return True
        if host_header is None:
            return False
        host = host_of(host_header)
        if host is None:
            return False
        return any(_matches(host, pattern) for pattern in self.patterns)


def _normalise_pattern(entry: str) -> str | None:
    if not entry:
        return None
    if entry.startswith("[") or ":" in entry:
        # An IPv6 literal, bracketed or not; a ':' in anything else would be a port.
        literal = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise ValueError(
                f"{SETTING}: {entry!r} is neither a host name nor an IPv6 literal; write "
                "host names or patterns without a port (e.g. gateway.example.com, "
                "*.example.com, [::1])"
            ) from None
    if _PATTERN.fullmatch(entry) is None:
        raise ValueError(
            f"{SETTING}: {entry!r} is not a host name or pattern; use letters, digits, "
            "'-', '_', '.' and the wildcards '*', '?' (e.g. *.example.com)"
        )
    pattern = entry.lower()
    return pattern[:-1] if pattern.endswith(".") and len(pattern) > 1 else pattern


def _matches(host: str, pattern: str) -> bool:
    if ":" in pattern:
        # IPv6 literals compare as addresses (host_of gives them in the same compressed form).
        return host == pattern
    return fnmatch.fnmatchcase(host, pattern)


def host_header(scope: Scope) -> str | None:
    """The request's single Host value; None when it has none or several that differ.

    pyvoy gives HTTP/2's `:authority` as `host`, as ASGI asks.
    """
    found: str | None = None
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() != b"host":
            continue
        text = bytes(value).decode("latin-1")
        if found is not None and text != found:
            return None
        found = text
    return found


class HostGuard:
    """ASGI layer: requests to a host `allowed` does not allow get permission_denied.

    Probes (`/healthz`, `/readyz`, spelled exactly) are always answered.
    """

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed.any_host or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = host_header(scope)
        if self.allowed.allows(header) or _is_probe(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_error(scope, send, Code.PERMISSION_DENIED, refusal_message(header))


def _is_probe(scope: Scope) -> bool:
    path = scope.get("path")
    raw = scope.get("raw_path")
    # Exactly as spelled: `/%68ealthz` decodes to a probe path but is not one.
    return path in PROBE_PATHS and (raw is None or bytes(raw) == str(path).encode())


def refusal_message(header: str | None) -> str:
    """What the refused caller is told: the host (when it is one) and the setting."""
    if header is None:
        what = "a request without a single Host header"
    elif host_of(header) is None or len(header) > _MAX_SHOWN:
        what = "a request with a malformed Host header"
    else:
        what = f"host {header!r}"
    return (
        f"{what} is not served here: this gateway answers only the hosts in "
        f"{SETTING}; add the host there (comma-separated names or patterns such as "
        "*.example.com) if this gateway should answer it"
    )
