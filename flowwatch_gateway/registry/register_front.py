"""Register streams framed here instead of by connectrpc's server.

With 1,000 subsystems at a 1 s heartbeat the gateway handles 2,000 Register messages
a second, and with nothing else to do that is most of its idle CPU. Under
connectrpc's server each message passes its request receiver, two async generators
and a sleep(0) on the way in, and its response sender and a gzip framing on the way
out (py-spy: those layers were about a fifth of the Python thread's busy samples).

This front serves the common cases itself: Connect and gRPC streams over HTTP/2 with
binary messages, requests not compressed and no deadline (what the Python SDK,
connect-go, connect-es and grpc clients send unless told otherwise). It drives
`RegisterService.serve` directly, reading and writing envelopes with connectrpc's
own envelope reader and writers, so the bytes, errors and trailers on the wire follow
connectrpc's rules; answers are not compressed (Register's messages are a few dozen
bytes). Every other request (gRPC-Web, JSON, compressed requests, a deadline,
HTTP/1.1) goes to `fallback`, connectrpc's app, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from connectrpc._compression import IdentityCompression
from connectrpc._envelope import EnvelopeReader, EnvelopeWriter
from connectrpc._protocol import ConnectWireError
from connectrpc._protocol_connect import ConnectEnvelopeWriter
from connectrpc._protocol_grpc import GRPCEnvelopeWriter
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_binary_codec
from connectrpc.errors import ConnectError
from connectrpc.request import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowwatch_gateway.asgi_receive import CancelSafeReceive
from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import (
    GatewayMessage,
    SubsystemMessage,
)
from flowwatch_gateway.registry.register import RegisterService

__all__ = ["RegisterFront"]

log = logging.getLogger(__name__)

HTTP2_VERSIONS = ("2", "2.0", "3")
_CODEC = google_protobuf_binary_codec()  # what the generated app uses
_NO_TRAILERS = Headers()


@dataclass(frozen=True)
class _Protocol:
    """How one protocol frames a binary stream: connectrpc's writer, headers, trailers."""

    content_types: tuple[bytes, ...]
    # Request headers that send the stream to connectrpc: a deadline, and the request
    # compression header (anything but identity).
    deadline_header: bytes
    encoding_header: bytes
    # What connectrpc's server sends at the start of such a stream, uncompressed.
    headers: list[tuple[bytes, bytes]]
    trailers: bool  # the status goes in HTTP trailers (gRPC), not a last message
    writer: Callable[[], EnvelopeWriter[GatewayMessage]]


CONNECT = _Protocol(
    (b"application/connect+proto",),
    b"connect-timeout-ms",
    b"connect-content-encoding",
    [(b"content-type", b"application/connect+proto"), (b"connect-content-encoding", b"identity")],
    trailers=False,
    writer=lambda: ConnectEnvelopeWriter(_CODEC, None),
)
GRPC = _Protocol(
    (b"application/grpc", b"application/grpc+proto"),
    b"grpc-timeout",
    b"grpc-encoding",
    [(b"content-type", b"application/grpc+proto"), (b"grpc-encoding", b"identity")],
    trailers=True,
    writer=lambda: GRPCEnvelopeWriter(_CODEC, None),
)


class _Gone(Exception):
    """The client is gone: nothing more can be sent on this stream."""


class RegisterFront:
    """ASGI app for the Register path: plain streams here, the rest `fallback`."""

    def __init__(self, service: RegisterService, fallback: ASGIApp, *, read_max_bytes: int) -> None:
        self._service = service
        self._fallback = fallback
        self._read_max_bytes = read_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = _plain_stream(scope)
        if protocol is None:
            await self._fallback(scope, receive, send)
            return
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else ""
        writer = protocol.writer()
        started = False

        async def respond(message: Message) -> None:
            nonlocal started
            try:
                if not started:
                    started = True
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": protocol.headers,
                            "trailers": protocol.trailers,
                        }
                    )
                await send(message)
            except Exception as exc:
                raise _Gone from exc

        stream = self._service.serve(self._messages(receive), peer)
        error: Exception | None = None
        try:
            async for message in stream:
                body = writer.write(message)
                await respond({"type": "http.response.body", "body": body, "more_body": True})
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
        end = writer.end(_NO_TRAILERS, wire)
        with contextlib.suppress(_Gone):
            if isinstance(end, bytes):  # Connect: the status is the last message
                await respond({"type": "http.response.body", "body": end, "more_body": False})
                return
            await respond({"type": "http.response.body", "body": b"", "more_body": False})
            trailers = [(name.encode(), value.encode()) for name, value in end.allitems()]
            await respond(
                {"type": "http.response.trailers", "headers": trailers, "more_trailers": False}
            )

    async def _messages(self, receive: Receive) -> AsyncIterator[SubsystemMessage]:
        """The request's messages, until the client ends its side of the stream."""
        # The handler's first-message timeout and its pong reader's cancellation end
        # a wait here; the server's receive() itself must not be cancelled.
        receive = CancelSafeReceive(receive)
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


def _plain_stream(scope: Scope) -> _Protocol | None:
    """The protocol of a binary stream over HTTP/2 without request compression or a
    deadline; None for anything else (connectrpc's server answers those)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    if str(scope.get("http_version", "1.1")) not in HTTP2_VERSIONS:
        return None
    headers = dict(scope["headers"])  # names arrive lower-cased (ASGI)
    content_type = headers.get(b"content-type", b"")
    protocol = next((p for p in (CONNECT, GRPC) if content_type in p.content_types), None)
    if protocol is None or protocol.deadline_header in headers:
        return None
    if headers.get(protocol.encoding_header, b"identity") not in (b"", b"identity"):
        return None
    return protocol
