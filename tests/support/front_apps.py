"""A tiny app behind the front layers (CanonicalPaths, HostGuard), for real servers.

Served by uvicorn or pyvoy as `tests.support.front_apps:app`; it answers every request
with what the server handed the app (path, raw_path, host, headers) as JSON, so a test sees
both what the layers refused and what got through. FRONT_ALLOWED_HOSTS is the
allow-list (GATEWAY_ALLOWED_HOSTS' format; empty = any host).
"""

from __future__ import annotations

import json
import os

from starlette.types import Receive, Scope, Send

from flowwatch_gateway.serving.canonical import CanonicalPaths
from flowwatch_gateway.serving.hosts import AllowedHosts, HostGuard, host_header

ALLOWED_HOSTS_ENV = "FRONT_ALLOWED_HOSTS"


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    raw = scope.get("raw_path")
    body = json.dumps(
        {
            "path": scope["path"],
            "raw_path": None if raw is None else bytes(raw).decode("latin-1"),
            "host": host_header(scope),
            "headers": [
                [bytes(name).decode("latin-1"), bytes(value).decode("latin-1")]
                for name, value in scope.get("headers", ())
            ],
            "http_version": scope.get("http_version"),
            "client": list(scope["client"]) if scope.get("client") else None,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The order the gateway uses: paths first (outermost), then hosts.
app = CanonicalPaths(HostGuard(echo, AllowedHosts.parse(os.environ.get(ALLOWED_HOSTS_ENV, ""))))
# What the servers hand an app, with nothing in front (to show what they do themselves).
bare = echo
