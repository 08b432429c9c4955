"""ASGI checks that refuse a request before any service sees it, in the caller's protocol.

- `RequireHttp2` sits in front of GatewayService: Register is a full-duplex stream
  and needs HTTP/2. Over HTTP/1.1 a stream was registered, then went stale
  milliseconds later on every retry while the client failed with an unrelated
  message; now it is refused before anything is registered.
- `ReadOnlyActions` answers every action rpc with permission_denied when the
  gateway runs with GATEWAY_READ_ONLY, without touching the proxy.

Refusals are written as each protocol expects, so every client shows the code and
message: gRPC and gRPC-Web get a trailers-only response (grpc-status in the
headers), Connect streams an end-of-stream message, and Connect unary (and any
other caller) a JSON error body with the HTTP status Connect maps the code to.

HTTP/1.1 Register attempts get `failed_precondition`: the rpc exists and the
request may be fine; the caller's transport must change before it can succeed
(what the Go gateway says with 505). `unimplemented` would send people looking
for a missing method or a wrong gateway version instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote

from connectrpc.code import Code
from starlette.types import ASGIApp, Receive, Scope, Send

# gRPC status numbers and Connect's HTTP statuses for unary errors, per code.
_GRPC_STATUS = {code: number for number, code in enumerate(Code, start=1)}
_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
_END_STREAM_FLAG = 0x02

HTTP2_REQUIRED = (
    "GatewayService.Register needs HTTP/2 (it is a full-duplex stream), but this "
    "request came over HTTP/{version}. Use HTTP/2 with prior knowledge (h2c) for "
    "http:// gateways, or https:// with TLS and ALPN h2; e.g. in Go set "
    "http.Transport.Protocols to unencrypted HTTP/2 or use golang.org/x/net/http2 with "
    "AllowHTTP, in Python pyqwest.HTTPTransport(http_version=HTTPVersion.HTTP2)"
)

# Every rpc that changes runs or indexes; reads stay available in read-only mode.
ACTION_PATHS = frozenset(
    {
        *(
            f"/flowwatch.v1.RunService/{rpc}"
            for rpc in (
                "RetryRun",
                "RetryFromStep",
                "CancelRun",
                "PauseRun",
                "ResumeRun",
                "SkipStep",
                "BulkRetry",
                "BulkCancel",
            )
        ),
        "/flowwatch.v1.SearchService/Reindex",
    }
)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


async def send_error(scope: Scope, send: Send, code: Code, message: str) -> None:
    """Answer the request with a Connect/gRPC error in the protocol it was sent in."""
    content_type = _header(scope, b"content-type").split(";", 1)[0].strip().lower()
    headers: list[tuple[bytes, bytes]]
    if content_type.startswith("application/grpc"):
        headers = [
            (b"content-type", content_type.encode()),
            (b"grpc-status", str(_GRPC_STATUS[code]).encode()),
            (b"grpc-message", quote(message, safe=" ").encode()),
        ]
        await _respond(send, 200, headers, b"")
        return
    error = {"code": code.value, "message": message}
    if content_type.startswith("application/connect+"):
        payload = json.dumps({"error": error}).encode()
        body = bytes([_END_STREAM_FLAG]) + len(payload).to_bytes(4, "big") + payload
        await _respond(send, 200, [(b"content-type", content_type.encode())], body)
        return
    await _respond(
        send,
        _HTTP_STATUS[code],
        [(b"content-type", b"application/json")],
        json.dumps(error).encode(),
    )


async def _respond(
    send: Send, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> None:
    all_headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequireHttp2:
    """Refuse anything but HTTP/2 (or 3) before the wrapped app runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = str(scope.get("http_version", "1.1"))
        if scope["type"] == "http" and version not in ("2", "2.0", "3"):
            await send_error(
                scope, send, Code.FAILED_PRECONDITION, HTTP2_REQUIRED.format(version=version)
            )
            return
        await self.app(scope, receive, send)


class ReadOnlyActions:
    """Middleware: with GATEWAY_READ_ONLY, every action rpc gets permission_denied."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in ACTION_PATHS:
            rpc = str(scope["path"]).rsplit("/", 1)[-1]
            await send_error(
                scope,
                send,
                Code.PERMISSION_DENIED,
                f"{rpc} is refused: this gateway runs read-only (GATEWAY_READ_ONLY), so "
                "actions on runs are disabled; use a gateway without it to change runs",
            )
            return
        await self.app(scope, receive, send)
