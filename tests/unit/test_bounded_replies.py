"""Every reply a subsystem sends is bounded while it arrives, in GuardedTransport.

A fake transport in-process stands in for a hostile subsystem: a body that never ends,
a stream message declaring 2 GiB, error bodies that never end. The cap must cut each
off as it streams (the fake counts what was taken from it and sees its body closed),
while a long stream of small messages goes on for as long as it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import struct
from collections.abc import AsyncIterator

import pyqwest
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.errors import ReplyTooLarge
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.upstream import (
    READ_MAX_BYTES,
    GuardedTransport,
    SharedTransports,
    UpstreamClients,
    capped_response,
    read_capped,
)

pytestmark = pytest.mark.anyio

CHUNK = 64 * 1024
PROTO = "application/proto"
STREAM = "application/connect+proto"


class Endless:
    """A transport answering 200 with `content_type` and then whatever `body` yields."""

    def __init__(self, content_type: str, body: AsyncIterator[bytes], status: int = 200) -> None:
        self.content_type = content_type
        self.status = status
        self.body = body
        self.sent = 0
        self.closed = False

    async def _counted(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.body:
                self.sent += len(chunk)
                yield chunk
        finally:
            self.closed = True

    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        headers = pyqwest.Headers([("content-type", self.content_type)])
        return pyqwest.Response(status=self.status, headers=headers, content=self._counted())


async def zeros() -> AsyncIterator[bytes]:
    while True:
        yield bytes(CHUNK)
        await asyncio.sleep(0)


async def forever_after(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await asyncio.Event().wait()  # the rest never comes: only the prefix may decide
    yield b""


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def clients(inner: pyqwest.Transport) -> UpstreamClients:
    return UpstreamClients("hostile", "http://127.0.0.1:9", "h2c", GuardedTransport(inner, None))


def bounded(fake: Endless) -> None:
    """What the fake gave is the cap and one chunk at most, and its body was closed."""
    assert fake.sent <= READ_MAX_BYTES + CHUNK
    assert fake.closed


async def test_an_endless_unary_reply_is_cut_off_past_the_cap() -> None:
    fake = Endless(PROTO, zeros())
    with pytest.raises(ConnectError) as failed:
        await clients(fake).workflows.get_capabilities(wf.GetCapabilitiesRequest())
    assert isinstance(failed.value, ReplyTooLarge)
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    bounded(fake)


async def test_a_unary_reply_claiming_to_be_a_stream_is_still_capped_whole() -> None:
    # Small envelopes without end: per-message limits would let this grow for ever.
    async def small_envelopes() -> AsyncIterator[bytes]:
        while True:
            yield envelope(bytes(1000)) * 64
            await asyncio.sleep(0)

    fake = Endless(STREAM, small_envelopes())
    with pytest.raises(ConnectError) as failed:
        await clients(fake).workflows.get_capabilities(wf.GetCapabilitiesRequest())
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    bounded(fake)


async def test_an_endless_error_body_is_cut_off() -> None:
    fake = Endless("application/json", zeros(), status=500)
    with pytest.raises(ConnectError) as failed:
        await clients(fake).workflows.get_capabilities(wf.GetCapabilitiesRequest())
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    bounded(fake)


async def test_an_endless_error_body_to_a_stream_is_cut_off() -> None:
    fake = Endless("application/json", zeros(), status=500)
    with pytest.raises(ConnectError) as failed:
        async for _ in clients(fake).stream.watch_stats(stream.WatchStatsRequest()):
            pass
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    bounded(fake)


async def test_a_stream_message_declaring_2_gib_fails_at_its_prefix() -> None:
    fake = Endless(STREAM, forever_after(struct.pack(">BI", 0, 2**31)))
    async with asyncio.timeout(30):  # a hang, not a measurement: the bytes never come
        with pytest.raises(ConnectError) as failed:
            async for _ in clients(fake).stream.watch_stats(stream.WatchStatsRequest()):
                pass
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    assert fake.sent == 5 and fake.closed


async def test_an_endless_stream_message_is_cut_off_past_the_cap() -> None:
    # A prefix declaring just over the cap, then bytes without end.
    async def body() -> AsyncIterator[bytes]:
        yield struct.pack(">BI", 0, READ_MAX_BYTES + 1)
        async for chunk in zeros():
            yield chunk

    fake = Endless(STREAM, body())
    with pytest.raises(ConnectError) as failed:
        async for _ in clients(fake).stream.watch_stats(stream.WatchStatsRequest()):
            pass
    assert failed.value.code == Code.RESOURCE_EXHAUSTED
    assert fake.sent == 5 and fake.closed


async def test_a_long_stream_of_small_messages_is_not_capped_as_a_whole() -> None:
    snapshot = b"event" * 4
    count = 4000

    async def body() -> AsyncIterator[bytes]:
        # Prefixes and payloads split across chunks at every offset.
        data = envelope(snapshot) * count + envelope(b"{}", flags=0b10)
        for at in range(0, len(data), 7):
            yield data[at : at + 7]

    limit = 64  # far below what the whole stream carries
    fake = Endless(STREAM, body())
    request = pyqwest.Request("POST", "http://x/s", pyqwest.Headers([("content-type", STREAM)]))
    answer = await capped_response(await fake.execute(request), stream=True, limit=limit)
    received = bytearray()
    async for chunk in answer.content:
        received.extend(chunk)
    assert len(received) == count * (5 + len(snapshot)) + 7 > limit
    assert fake.closed


async def test_a_stream_message_over_a_small_cap_fails_wherever_its_prefix_is_cut() -> None:
    for split in range(1, 6):
        data = envelope(b"ok") + envelope(bytes(100))

        async def body(data: bytes = data, split: int = split) -> AsyncIterator[bytes]:
            yield data[: 7 + split]
            yield data[7 + split :]

        fake = Endless(STREAM, body())
        request = pyqwest.Request("POST", "http://x/s")
        answer = await capped_response(await fake.execute(request), stream=True, limit=10)
        with pytest.raises(ReplyTooLarge):
            async for _ in answer.content:
                pass
        assert fake.closed


async def test_read_capped_reads_a_reply_within_the_cap_and_refuses_more() -> None:
    async def small() -> AsyncIterator[bytes]:
        yield b"a" * 10
        yield b"b" * 10

    request = pyqwest.Request("POST", "http://x/u")
    answer = await Endless(PROTO, small()).execute(request)
    assert await read_capped(answer) == b"a" * 10 + b"b" * 10
    fake = Endless(PROTO, zeros())
    with pytest.raises(ReplyTooLarge):
        await read_capped(await fake.execute(request))
    bounded(fake)


async def test_a_stream_closed_unread_closes_the_subsystems_response() -> None:
    fake = Endless(STREAM, forever_after(envelope(b"first")))
    guarded = GuardedTransport(fake, None)
    headers = pyqwest.Headers([("content-type", STREAM)])
    answer = await guarded.execute(pyqwest.Request("POST", "http://x/s", headers))
    async for chunk in answer.content:
        assert bytes(chunk) == envelope(b"first")
        break
    await answer.aclose()
    assert fake.closed


async def test_a_compressed_bomb_is_capped_by_what_it_inflates_to() -> None:
    """A few hundred kB of gzip that inflate past the cap, over a real socket: the bytes
    counted are those pyqwest hands on after decompressing."""
    bomb = gzip.compress(bytes(READ_MAX_BYTES * 2), compresslevel=9)
    assert len(bomb) < READ_MAX_BYTES // 100

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            head = (
                "HTTP/1.1 200 OK\r\ncontent-type: application/proto\r\n"
                f"content-encoding: gzip\r\ncontent-length: {len(bomb)}\r\n\r\n"
            )
            writer.write(head.encode() + bomb)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transports = SharedTransports()
    try:
        hostile = transports.connect("bomb", f"http://127.0.0.1:{port}", "http1")
        with pytest.raises(ReplyTooLarge):
            await hostile.workflows.get_capabilities(wf.GetCapabilitiesRequest())
    finally:
        await transports.aclose()
        server.close()
        await server.wait_closed()
