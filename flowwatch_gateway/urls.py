"""URL helpers shared by the gateway (registered endpoints, settings) and the client."""

from __future__ import annotations

from urllib.parse import urlsplit


def http_url_problem(url: str) -> str:
    """What is wrong with `url` as an absolute http(s) URL with a host; "" if nothing."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "scheme must be http or https"
    if not parts.hostname:
        return "no host"
    return ""


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and probes."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{host}{slash}{path}"
