"""The operator's pages (/metrics, /status): off the UI's CORS surface, maybe on their own port.

`OperatorPages` sits outside the CORS middleware, so its answers never carry
Access-Control-Allow-* headers: a browser page of another origin (the UI's included)
cannot read them. With GATEWAY_METRICS_ADDR the pages are also served by
`serve_operator_pages`, a deliberately tiny HTTP/1.1 server on asyncio (GET and HEAD
of a known path, one request per connection). It runs in the app's own event loop,
started by the lifespan, which works the same under pyvoy (inside the Envoy
process) and uvicorn, and it needs nothing beyond the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["OperatorPages", "Page", "serve_operator_pages"]

log = logging.getLogger(__name__)

Page = Callable[[], tuple[str, bytes]]
"""Renders a page now: (content type, body)."""

REQUEST_HEAD_MAX_BYTES = 16 * 1024
REQUEST_READ_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


class OperatorPages:
    """ASGI middleware answering GET/HEAD of `pages` itself; everything else passes on."""

    def __init__(self, app: ASGIApp, *, pages: Mapping[str, Page]) -> None:
        self._app = app
        self._pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = self._pages.get(scope.get("path", "")) if scope["type"] == "http" else None
        if page is None or scope["method"] not in ("GET", "HEAD"):
            await self._app(scope, receive, send)
            return
        content_type, body = page()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


async def serve_operator_pages(host: str, port: int, pages: Mapping[str, Page]) -> asyncio.Server:
    """Listen on host:port and answer GET/HEAD of `pages`; close the returned server to stop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body, method = _answer(head, pages)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, truncated or oversized request gets no answer
        except ConnectionError:
            pass
        except Exception:
            log.exception("operator page failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port, limit=REQUEST_HEAD_MAX_BYTES)
    log.info("metrics and status listening on %s:%d (%s)", host, port, ", ".join(pages))
    return server


def _answer(head: bytes, pages: Mapping[str, Page]) -> tuple[int, str, bytes, str]:
    """(status, content type, body, method) for one request head."""
    text = "text/plain; charset=utf-8"
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return 400, text, b"bad request\n", "GET"
    method, target = parts[0], parts[1]
    page = pages.get(target.split("?", 1)[0])
    if page is None:
        return 404, text, b"not found\n", method
    if method not in ("GET", "HEAD"):
        return 405, text, b"method not allowed\n", method
    content_type, body = page()
    return 200, content_type, body, method
