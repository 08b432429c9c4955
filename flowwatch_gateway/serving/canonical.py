"""Refuse every request whose path is not already in canonical form (404).

Both servers hand the app the request path percent-decoded (`scope["path"]`) and the
bytes the client sent (`scope["raw_path"]`): `/flowwatch.v1.RunService/Cancel%52un`
and `/flowwatch.v1.RunService%2FCancelRun` both arrive as `.../CancelRun`. Routing on
the decoded path runs an rpc that a load balancer's path rule, which looks at the
bytes, never saw. Neither server (nor Envoy, as pyvoy configures it) merges slashes
or removes dot segments, so `//x` or `/./x` reach the app as they were sent, and
another hop in front may normalise them differently.

Every path the gateway serves (`/healthz`, `/readyz`, `/metrics`, `/status`,
`/<package>.<Service>/<Method>`) is made of unreserved characters only, so the rule is
simple and needs no decoding: a path is canonical when it is `/` or `/` followed by
non-empty segments of RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`), none of
them `.` or `..`, without a trailing slash; and the decoded path the server gives
equals those bytes. Anything else (a `%` escape of any character, `//`, `.`/`..`
segments, `;` parameters, `\\`, a trailing `/`, an absolute-form target) is answered
404, never decoded into another path. Case is left alone: routes are case-sensitive,
so a case variant is simply not found by them.

The answer is HTTP 404 for every protocol: Connect and gRPC clients both read 404 as
`unimplemented`, and the JSON body says so in Connect's error format. The path is not
echoed back nor logged: it is whatever the client chose to send.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Receive, Scope, Send

# "/" or one or more "/segment" of unreserved characters; dot segments are checked apart.
_CANONICAL = re.compile(rb"/|(?:/[A-Za-z0-9\-._~]+)+")
_DOT_SEGMENTS = frozenset({b".", b".."})

NOT_CANONICAL_MESSAGE = (
    "no such path: the request path is not in canonical form (percent-escapes, empty "
    "or dot segments, ';' parameters, backslashes and trailing slashes are not "
    "accepted); send the exact path, e.g. /flowwatch.v1.RunService/GetRun"
)
_BODY = json.dumps({"code": "unimplemented", "message": NOT_CANONICAL_MESSAGE}).encode()


def request_path_bytes(scope: Scope) -> bytes:
    """The path as the client sent it: `raw_path`, or the path when a server gives none."""
    raw = scope.get("raw_path")
    if raw is not None:
        return bytes(raw)
    return str(scope.get("path", "")).encode("utf-8", "surrogateescape")


def is_canonical(scope: Scope) -> bool:
    """Whether the request's path is its own canonical form (see the module docstring)."""
    raw = request_path_bytes(scope)
    if _CANONICAL.fullmatch(raw) is None:
        return False
    if any(segment in _DOT_SEGMENTS for segment in raw.split(b"/")):
        return False
    # A server that decoded or rewrote the path differently from its bytes: refuse too.
    return scope.get("path") == raw.decode("ascii")


class CanonicalPaths:
    """ASGI layer: a request whose path is not canonical gets 404 and goes no further.

    Meant as the outermost layer, in front of every route and front (Register, the
    passthrough, the middleware stack), so nothing behind it routes on a path the
    client spelled another way. HTTP and WebSocket scopes are checked; lifespan
    passes through.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and not is_canonical(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_BODY)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _BODY, "more_body": False})
            return
        if kind == "websocket" and not is_canonical(scope):
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)
