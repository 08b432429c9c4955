"""Register over the Connect protocol, framed here instead of by connectrpc's server.

With 1,000 subsystems at a 1 s heartbeat the gateway handles 2,000 Register messages
a second, and with nothing else to do that is most of its idle CPU. Under
connectrpc's server each message passes its request receiver, two async generators
and a sleep(0) on the way in, and its response sender and a gzip framing on the way
out (py-spy: those layers were about a fifth of the Python thread's busy samples).

This front serves the common case itself: Connect streaming over HTTP/2 with binary
messages, requests not compressed and no deadline (what the Python SDK, connect-go
and connect-es send unless told otherwise). It drives `RegisterService.serve`
directly, reading and writing envelopes with connectrpc's own envelope reader and
writer, so the bytes and errors on the wire follow connectrpc's rules; answers are
not compressed (Register's messages are a few dozen bytes). Every other request (gRPC,
gRPC-Web, JSON, compressed requests, a deadline, HTTP/1.1) goes to `fallback`,
connectrpc's app, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from connectrpc._compression import IdentityCompression
from connectrpc._envelope import EnvelopeReader
from connectrpc._protocol import ConnectWireError
from connectrpc._protocol_connect import ConnectEnvelopeWriter
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_binary_codec
from connectrpc.errors import ConnectError
from connectrpc.request import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import SubsystemMessage
from flowwatch_gateway.registry.register import RegisterService

__all__ = ["ConnectRegister"]

log = logging.getLogger(__name__)

CONTENT_TYPE = b"application/connect+proto"
HTTP2_VERSIONS = ("2", "2.0", "3")
# What connectrpc's server sends at the start of an uncompressed Connect stream.
_HEADERS = [(b"content-type", CONTENT_TYPE), (b"connect-content-encoding", b"identity")]
_CODEC = google_protobuf_binary_codec()  # what the generated app uses
_NO_TRAILERS = Headers()


class _Gone(Exception):
    """The client is gone: nothing more can be sent on this stream."""


class ConnectRegister:
    """ASGI app for the Register path: the common Connect case here, the rest `fallback`."""

    def __init__(self, service: RegisterService, fallback: ASGIApp, *, read_max_bytes: int) -> None:
        self._service = service
        self._fallback = fallback
        self._read_max_bytes = read_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _plain_connect_stream(scope):
            await self._fallback(scope, receive, send)
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else ""
        writer = ConnectEnvelopeWriter(_CODEC, None)
        started = False

        async def respond(body: bytes, *, more: bool) -> None:
            nonlocal started
            try:
                if not started:
                    started = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": _HEADERS,
                            "trailers": False,
                        }
                    )
                await send({"type": "http.response.body", "body": body, "more_body": more})
            except Exception as exc:
                raise _Gone from exc

        stream = self._service.serve(self._messages(receive), peer)
        error: Exception | None = None
        try:
            async for message in stream:
                await respond(writer.write(message), more=True)
        except _Gone as gone:
            log.debug("Register stream from %s: client gone: %r", peer, gone.__cause__)
            return
        except ConnectError as exc:
            error = exc
        except Exception as exc:  # as connectrpc does: the client learns `unknown`
            log.exception("Register stream from %s failed", peer or "an unknown peer")
            error = exc
        finally:
            await stream.aclose()
        wire = ConnectWireError.from_exception(error) if error is not None else None
        with contextlib.suppress(_Gone):
            await respond(writer.end(_NO_TRAILERS, wire), more=False)

    async def _messages(self, receive: Receive) -> AsyncIterator[SubsystemMessage]:
        """The request's messages, until the client ends its side of the stream."""
        reader: EnvelopeReader[SubsystemMessage] = EnvelopeReader(
            SubsystemMessage, _CODEC, IdentityCompression(), self._read_max_bytes
        )
        with reader:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    raise ConnectError(
                        Code.CANCELED, "Client disconnected before request completion"
                    )
                for decoded in reader.feed(message.get("body", b"")):
                    yield decoded
                if not message.get("more_body", False):
                    return


def _plain_connect_stream(scope: Scope) -> bool:
    """Connect streaming over HTTP/2, binary, requests not compressed, no deadline."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    if str(scope.get("http_version", "1.1")) not in HTTP2_VERSIONS:
        return False
    content_type = b""
    for raw_name, value in scope["headers"]:
        name = raw_name.lower()
        if name == b"content-type":
            content_type = value
        elif name == b"connect-timeout-ms" or (
            name == b"connect-content-encoding" and value not in (b"", b"identity")
        ):
            return False
    return content_type == CONTENT_TYPE
