"""GATEWAY_ALLOWED_HOSTS: the host names a gateway answers, as one rule.

Comma-separated host names, fnmatch patterns (`*`, `?`, `[...]`), IPv4 addresses and
bracketed IPv6 literals. No ports: the host is compared without its port. Names are
compared case-insensitively, a trailing dot is ignored. An empty list allows any
host. The configuration checks the setting with this rule, and serving/hosts.py
applies it to every request.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["MAX_SHOWN_HOST", "SETTING", "AllowedHosts", "host_of"]

SETTING = "GATEWAY_ALLOWED_HOSTS"

# A DNS name (letters, digits, '-', '_', dots) or an IPv4 address, then an optional port.
_NAME_WITH_PORT = re.compile(r"([A-Za-z0-9_.-]+)(?::([0-9]*))?")
# A bracketed IPv6 literal, then an optional port.
_IPV6_WITH_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]*))?")
_PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")
# Longest host shown back in a refusal (a DNS name is at most 253 characters).
MAX_SHOWN_HOST = 253


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
    if "/" in entry:
        host = urlsplit(entry if "://" in entry else f"//{entry}").hostname or entry
        raise ValueError(f"{entry!r} is not a host; write the host only, e.g. {host}")
    name, colon, port = entry.rpartition(":")
    if colon and port.isdigit() and name and not name.startswith("[") and ":" not in name:
        raise ValueError(
            f"{entry!r} has a port; write the host without it ({name}): a host is "
            "allowed on every port the gateway listens on"
        )
    if entry.startswith("[") or ":" in entry:
        # An IPv6 literal, bracketed or not; a ':' in anything else would be a port.
        literal = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise ValueError(
                f"{entry!r} is neither a host name nor an IPv6 literal; write "
                "host names or patterns without a port (e.g. gateway.example.com, "
                "*.example.com, [::1])"
            ) from None
    if _PATTERN.fullmatch(entry) is None:
        raise ValueError(
            f"{entry!r} is not a host name or pattern; use letters, digits, "
            "'-', '_', '.' and the wildcards '*', '?' (e.g. *.example.com)"
        )
    pattern = entry.lower()
    return pattern[:-1] if pattern.endswith(".") and len(pattern) > 1 else pattern


def _matches(host: str, pattern: str) -> bool:
    if ":" in pattern:
        # IPv6 literals compare as addresses (host_of gives them in the same compressed form).
        return host == pattern
    return fnmatch.fnmatchcase(host, pattern)
