"""URL checks shared by the gateway (registered endpoints) and the client (its options)."""

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
