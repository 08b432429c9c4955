"""In-process subsystems for proxy tests: demo engines behind an ASGI transport.

The gateway's upstream pool takes a `connect` factory; these subsystems hand it
clients whose transport calls a demo subsystem's ASGI app directly, each able to be
slow, down, or to answer an rpc with a chosen error. The socket tests in tests/e2e
cover the real leg.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pyqwest
from pyqwest.testing import ASGITransport

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import GuardedTransport
from flowwatch_gateway.registry.memory import InMemoryRegistry

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Subsystem:
    """One in-process demo subsystem and what it was asked."""

    engine: InMemoryEngine
    calls: list[str] = field(default_factory=list)
    # rpc path -> seconds to wait before answering (a slow subsystem)
    delays: dict[str, float] = field(default_factory=dict)
    # rpc path -> (Connect code, message) to answer with instead of the engine
    answers: dict[str, tuple[str, str]] = field(default_factory=dict)
    down: bool = False  # connections are refused

    def transport(self) -> pyqwest.Transport:
        """The gateway's guarded transport in front of this subsystem's app, in-process."""
        return GuardedTransport(_Refusable(self, ASGITransport(self.app())), None)

    def app(self) -> ASGIApp:
        inner = create_demo_app(self.engine)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                rpc = scope["path"].rsplit("/", 1)[-1]
                self.calls.append(rpc)
                if rpc in self.answers:
                    await _connect_error(send, *self.answers[rpc])
                    return
                await asyncio.sleep(self.delays.get(rpc, 0.0))
            await inner(scope, receive, send)

        return app


@dataclass
class _Refusable:
    """Refuses connections while the subsystem is down, as a dead process's port does."""

    subsystem: Subsystem
    inner: ASGITransport

    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        if self.subsystem.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return await self.inner.execute(request)


async def _connect_error(send: Send, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    status = {"internal": 500, "invalid_argument": 400, "failed_precondition": 400}.get(code, 500)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Stack:
    gateway: Gateway
    registry: InMemoryRegistry
    subsystems: dict[str, Subsystem]

    def ctx(self, timeout: float | None = 5.0) -> CallContext:
        return CallContext.with_timeout(timeout)


def register(registry: InMemoryRegistry, subsystem_id: str) -> None:
    registry.register(
        gateway_service_pb2.RegisterRequest(
            subsystem_id=subsystem_id,
            flowwatch_endpoint=f"http://{subsystem_id}.test",
            capabilities=types_pb2.Capabilities(),
            workflows=[types_pb2.WorkflowDefinition(id=f"wf-{subsystem_id}")],
        )
    )


async def probed(subsystems: Iterable[Subsystem]) -> None:
    """Wait for the pool's background probe of each subsystem, then forget it was asked."""
    pending = list(subsystems)
    for _ in range(500):
        if all("GetCapabilities" in s.calls for s in pending):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the pool never probed every subsystem")
    for s in pending:
        s.calls.clear()
