"""URL helpers shared by the gateway (registered endpoints, settings) and the client."""

from __future__ import annotations

import re
import string
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


# Characters whose percent-encoded form in an endpoint's path would be decoded into a
# separator, a dot segment or another escape by some server on the way, so that the
# path the gateway asked for and the path the subsystem serves could differ.
_ENCODED_AMBIGUOUS = frozenset(b"/?#\\.%;") | frozenset(range(0x20)) | {0x7F}
_PERCENT_ESCAPE = re.compile(r"%(..?)", re.DOTALL)


def endpoint_url_problem(url: str) -> str:
    """Why `url` cannot be a subsystem's endpoint; "" when it can.

    The gateway appends `/<service>/<method>` to the endpoint for every call, so the
    endpoint must fix only scheme, host, port and an optional path prefix, and mean
    the same to every parser on the way. A query or fragment would let the registrant
    choose the exact path of the gateway's POSTs (everything after `?`/`#` swallows
    the part the gateway appends); credentials would be shown wherever endpoints
    are. Such endpoints are refused, not rewritten: a silently changed endpoint
    would be a different one than the subsystem's owner configured.
    """
    for char in url:
        if char.isspace() or not char.isprintable():
            return (
                f"it contains the character {char!r} (whitespace or a control character); "
                "write the URL without it"
            )
    if "\\" in url:
        return "it contains a backslash, which servers read differently; use '/' in the path"
    problem = http_url_problem(url)
    if problem:
        return f"it is not an absolute http(s) URL with a host (e.g. http://orders:8080): {problem}"
    if "#" in url:
        return (
            "it has a fragment ('#...'); the gateway appends /<service>/<method> to the "
            "endpoint, so give only scheme, host, port and an optional path prefix"
        )
    if "?" in url:
        return (
            "it has a query ('?...'); the gateway appends /<service>/<method> to the "
            "endpoint, so give only scheme, host, port and an optional path prefix"
        )
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return (
            "it carries credentials (user:password@); the gateway sends none to subsystems "
            "and would not show them: remove them and protect the endpoint by its network "
            "or with TLS"
        )
    if "%" in parts.netloc:
        return "its host is percent-encoded; write the host name or address plainly"
    return _path_problem(parts.path)


def _path_problem(path: str) -> str:
    for match in _PERCENT_ESCAPE.finditer(path):
        digits = match.group(1)
        if len(digits) != 2 or not all(c in string.hexdigits for c in digits):
            return f"its path has a malformed percent-escape {match.group(0)!r}"
        if int(digits, 16) in _ENCODED_AMBIGUOUS:
            return (
                f"its path has {match.group(0)!r}, an encoded separator, dot, '%' or control "
                "character that servers decode differently; write the path plainly"
            )
    segments = path.split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        return "its path has a '.' or '..' segment; give the path prefix as it is served"
    if "" in segments[:-1]:
        return "its path has an empty segment ('//'); give the path prefix as it is served"
    if ";" in path:
        return "its path has a ';' (path parameters, read differently by servers); remove it"
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
