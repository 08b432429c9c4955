"""GATEWAY_ALLOWED_HOSTS: answer only requests addressed to this gateway's own names.

A gateway on localhost (or any private address) is otherwise reachable from any web
page by DNS rebinding: the page's own host name is re-pointed at 127.0.0.1, and the
browser, believing it talks to the page's origin, sends it requests and reads the
answers (CORS never applies: it is the same origin). What the browser cannot change
is the Host header (`:authority` in HTTP/2): it stays the attacker's name. Checking
it against the names the gateway is meant to be reached by closes that door.

- `AllowedHosts` (flowwatch_gateway/allowed_hosts.py): the names and patterns, one
  rule for the configuration and this layer.
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

from connectrpc.code import Code
from starlette.types import ASGIApp, Receive, Scope, Send

from flowwatch_gateway.allowed_hosts import MAX_SHOWN_HOST, SETTING, AllowedHosts, host_of
from flowwatch_gateway.serving.guards import send_error

__all__ = ["PROBE_PATHS", "AllowedHosts", "HostGuard", "host_header", "host_of", "refusal_message"]

# Called by IP by load balancers and kubelets, and they reveal nothing worth a rebinding.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


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
    elif host_of(header) is None or len(header) > MAX_SHOWN_HOST:
        what = "a request with a malformed Host header"
    else:
        what = f"host {header!r}"
    return (
        f"{what} is not served here: this gateway answers only the hosts in "
        f"{SETTING}; add the host there (comma-separated names or patterns such as "
        "*.example.com) if this gateway should answer it"
    )
