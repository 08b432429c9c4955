"""A server's receive() is never cancelled by the gateway (serving/asgi_guard.py).

The fake server below behaves as pyvoy does: receive() returns a plain future that
the server resolves later with `set_result`, whether or not it was cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from flowwatch_gateway.asgi_receive import CancelSafeReceive
from flowwatch_gateway.serving.asgi_guard import GuardReceiveAfterBody

pytestmark = pytest.mark.anyio


class PyvoyLikeServer:
    """Hands out futures from receive(); `deliver` resolves the oldest like pyvoy does."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Message]] = []
        self.errors: list[BaseException] = []

    def receive(self) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def deliver(self, message: Message) -> None:
        future = self.futures.pop(0)
        try:
            future.set_result(message)  # pyvoy does not check first
        except asyncio.InvalidStateError as exc:
            self.errors.append(exc)


BODY: Message = {"type": "http.request", "body": b"hello", "more_body": False}


async def test_a_cancelled_call_leaves_the_server_future_alone_and_keeps_its_message() -> None:
    server = PyvoyLikeServer()
    receive = CancelSafeReceive(server.receive)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await receive()
    assert len(server.futures) == 1 and not server.futures[0].cancelled()
    waiting = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    assert len(server.futures) == 1  # the second call waits on the same server future
    server.deliver(BODY)
    assert await waiting == BODY
    assert server.errors == []


async def test_a_server_message_nobody_asks_for_again_raises_nothing() -> None:
    server = PyvoyLikeServer()
    receive = CancelSafeReceive(server.receive)
    call = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    server.deliver({"type": "http.disconnect"})
    await asyncio.sleep(0)
    assert server.errors == []


async def test_the_guard_does_not_cancel_a_body_read_the_app_gives_up() -> None:
    server = PyvoyLikeServer()
    handled: list[Any] = []
    gave_up = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await receive()
        gave_up.set()
        handled.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    served = asyncio.ensure_future(GuardReceiveAfterBody(app)(scope, server.receive, send))
    await gave_up.wait()
    assert len(server.futures) == 1 and not server.futures[0].cancelled()
    server.deliver(BODY)
    await served
    assert handled == [BODY]
    assert server.errors == []
