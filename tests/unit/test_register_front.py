"""Register streams framed by the gateway: what it serves, what it leaves to connectrpc.

In process, with a real RegisterService and registry and a recording ASGI send; the
same streams over real sockets (SDK, connect-go, grpcio, raw h2) are in
tests/e2e (test_register_trust, test_client, the foreign-peer tests).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2 as gw
from flowwatch_gateway.registry.endpoints import EndpointPolicy
from flowwatch_gateway.registry.keys import ApiKeys
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.register import RegisterService
from flowwatch_gateway.registry.register_front import RegisterFront

KEY = "test-key"
PATH = "/flowwatch.v1.GatewayService/Register"
CONNECT = b"application/connect+proto"

pytestmark = pytest.mark.anyio


def scope(*headers: tuple[bytes, bytes], http_version: str = "2") -> Scope:
    """A Register request: Connect binary unless `headers` say otherwise."""
    named = {b"content-type": CONNECT, **dict(headers)}
    return {
        "type": "http",
        "method": "POST",
        "path": PATH,
        "http_version": http_version,
        "client": ("10.1.2.3", 4567),
        "headers": list(named.items()),
    }


def envelope(message: gw.SubsystemMessage, flags: int = 0) -> bytes:
    data = message.SerializeToString()
    return bytes([flags]) + len(data).to_bytes(4, "big") + data


def register(subsystem_id: str, api_key: str = KEY) -> gw.SubsystemMessage:
    return gw.SubsystemMessage(
        register=gw.RegisterRequest(
            subsystem_id=subsystem_id,
            api_key=api_key,
            flowwatch_endpoint="http://10.9.9.9:8080",
        )
    )


class Fallback:
    """connectrpc's app in the real gateway: records what reached it."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)


def setup() -> tuple[RegisterFront, InMemoryRegistry, Fallback]:
    registry = InMemoryRegistry()
    service = RegisterService(
        registry,
        keys=ApiKeys(KEY),
        endpoint_policy=EndpointPolicy.for_listener("127.0.0.1", 8091),
        heartbeat=30.0,
    )
    fallback = Fallback()
    return RegisterFront(service, fallback, read_max_bytes=1024), registry, fallback


async def exchange(app: RegisterFront, body: bytes, *headers: tuple[bytes, bytes]) -> list[Message]:
    """Send `body` as the whole request (the client ends its side); the messages sent back."""
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope(*headers), receive, send), 5)
    return sent


def frames(messages: list[Message]) -> list[tuple[int, bytes]]:
    """(flags, data) of every envelope in the response body."""
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    found = []
    while body:
        size = int.from_bytes(body[1:5], "big")
        found.append((body[0], body[5 : 5 + size]))
        body = body[5 + size :]
    return found


async def test_a_registration_is_answered_and_the_stream_ends_cleanly() -> None:
    app, registry, fallback = setup()
    sent = await exchange(app, envelope(register("orders")))
    start = sent[0]
    assert start["status"] == 200
    assert dict(start["headers"]) == {
        b"content-type": CONNECT,
        b"connect-content-encoding": b"identity",
    }
    (first_flags, first), (end_flags, end) = frames(sent)
    assert first_flags == 0
    answer = gw.GatewayMessage.FromString(first)
    assert answer.registered.accepted
    assert answer.registered.heartbeat_interval.seconds == 30
    assert (end_flags, json.loads(end)) == (0b10, {})
    assert sent[-1]["more_body"] is False
    instance = registry.get("orders")
    assert instance is not None and not instance.connected  # its stream has ended
    assert fallback.scopes == []


@pytest.mark.parametrize("content_type", [b"application/grpc", b"application/grpc+proto"])
async def test_grpc_streams_end_with_their_status_in_trailers(content_type: bytes) -> None:
    app, registry, fallback = setup()
    sent = await exchange(
        app,
        envelope(register("orders")),
        (b"content-type", content_type),
        (b"te", b"trailers"),
    )
    start, *_, last_body, trailers = sent
    assert start["trailers"] is True
    assert dict(start["headers"]) == {
        b"content-type": b"application/grpc+proto",
        b"grpc-encoding": b"identity",
    }
    ((flags, first),) = frames(sent)
    assert flags == 0
    assert gw.GatewayMessage.FromString(first).registered.accepted
    assert last_body == {"type": "http.response.body", "body": b"", "more_body": False}
    assert trailers["type"] == "http.response.trailers"
    assert dict(trailers["headers"])[b"grpc-status"] == b"0"
    assert registry.get("orders") is not None
    assert fallback.scopes == []

    refused = await exchange(
        app, envelope(register("payments", api_key="wrong")), (b"content-type", content_type)
    )
    status = dict(refused[-1]["headers"])
    assert status[b"grpc-status"] == b"16"  # unauthenticated
    assert b"invalid API key" in status[b"grpc-message"].replace(b"%20", b" ")


async def test_a_refusal_is_answered_then_ends_with_its_code() -> None:
    app, registry, _ = setup()
    sent = await exchange(app, envelope(register("orders", api_key="wrong")))
    (_, first), (end_flags, end) = frames(sent)
    assert not gw.GatewayMessage.FromString(first).registered.accepted
    error = json.loads(end)["error"]
    assert end_flags == 0b10
    assert error["code"] == "unauthenticated"
    assert "invalid API key" in error["message"]
    assert registry.get("orders") is None


async def test_a_message_over_the_limit_is_resource_exhausted() -> None:
    app, registry, _ = setup()
    big = register("orders")
    big.register.description = "d" * 2000
    ((_, end),) = frames(await exchange(app, envelope(big)))
    assert json.loads(end)["error"]["code"] == "resource_exhausted"
    assert registry.get("orders") is None


async def test_a_compressed_message_without_an_encoding_is_refused() -> None:
    app, registry, _ = setup()
    ((_, end),) = frames(await exchange(app, envelope(register("orders"), flags=1)))
    assert json.loads(end)["error"]["code"] == "internal"
    assert registry.get("orders") is None


@pytest.mark.parametrize(
    ("headers", "http_version"),
    [
        ([(b"content-type", b"application/grpc-web+proto")], "2"),
        ([(b"content-type", b"application/connect+json")], "2"),
        ([(b"content-type", b"application/grpc+json")], "2"),
        ([(b"connect-content-encoding", b"gzip")], "2"),
        ([(b"connect-timeout-ms", b"5000")], "2"),
        ([(b"content-type", b"application/grpc"), (b"grpc-encoding", b"gzip")], "2"),
        ([(b"content-type", b"application/grpc"), (b"grpc-timeout", b"5S")], "2"),
        ([], "1.1"),  # connectrpc's app, behind RequireHttp2, refuses it
    ],
    ids=[
        "grpc-web",
        "connect-json",
        "grpc-json",
        "connect-gzip-requests",
        "connect-deadline",
        "grpc-gzip-requests",
        "grpc-deadline",
        "http1",
    ],
)
async def test_everything_else_goes_to_connectrpc(
    headers: list[tuple[bytes, bytes]], http_version: str
) -> None:
    app, registry, fallback = setup()
    request = scope(*headers, http_version=http_version)

    async def receive() -> Message:
        raise AssertionError("the fallback was not called")

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent by the front itself")

    await app(request, receive, send)
    assert fallback.scopes == [request]
    assert registry.get("orders") is None
