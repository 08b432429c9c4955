"""The proxy's routing and failure rules, in-process: demo engines behind an ASGI transport.

The gateway's upstream pool takes a `connect` factory; here it hands out clients whose
transport calls a demo subsystem's ASGI app directly, so routing, first success,
partial failure and deadlines are checked without starting a process. The socket
tests in tests/e2e cover the real leg.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest.testing import ASGITransport

from flowwatch_gateway.api.context import PARTIAL_FAILURE_HEADER, CallContext
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RUNS_EACH = 40

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
    down: bool = False

    def app(self) -> ASGIApp:
        inner = create_demo_app(self.engine)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                rpc = scope["path"].rsplit("/", 1)[-1]
                self.calls.append(rpc)
                if self.down:
                    await _connect_error(send, "unavailable", "connection refused")
                    return
                await asyncio.sleep(self.delays.get(rpc, 0.0))
            await inner(scope, receive, send)

        return app


async def _connect_error(send: Send, code: str, message: str) -> None:
    body = f'{{"code":"{code}","message":"{message}"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
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


def _register(registry: InMemoryRegistry, subsystem_id: str) -> None:
    registry.register(
        gateway_service_pb2.RegisterRequest(
            subsystem_id=subsystem_id,
            flowwatch_endpoint=f"http://{subsystem_id}.test",
            capabilities=types_pb2.Capabilities(),
            workflows=[types_pb2.WorkflowDefinition(id=f"wf-{subsystem_id}")],
        )
    )


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    subsystems = {
        name: Subsystem(InMemoryEngine.demo(name, seed=seed, now=NOW, run_count=RUNS_EACH))
        for seed, name in enumerate(("orders", "payments", "shipping"))
    }
    apps = {f"http://{name}.test": s.app() for name, s in subsystems.items()}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", ASGITransport(apps[endpoint]))

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=2.0), connect=connect)
    for name in subsystems:
        _register(registry, name)
    await _probed(subsystems.values())
    try:
        yield Stack(gateway, registry, subsystems)
    finally:
        await gateway.aclose()


async def _probed(subsystems: Iterable[Subsystem]) -> None:
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


def _partial_failures(ctx: CallContext) -> str:
    return ctx.response_headers.get(PARTIAL_FAILURE_HEADER, "")


@pytest.mark.anyio
async def test_list_runs_pages_every_run_of_every_subsystem_once(stack: Stack) -> None:
    seen: list[str] = []
    cursor = ""
    while True:
        page = await stack.gateway.runs.list_runs(
            runs.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=7, cursor=cursor)),
            stack.ctx(),
        )
        seen.extend(run.id for run in page.runs)
        cursor = page.pagination.next_cursor
        if not cursor:
            break
    expected = {run.id for s in stack.subsystems.values() for run in s.engine.data.runs}
    assert len(seen) == len(expected) == 3 * RUNS_EACH
    assert set(seen) == expected


@pytest.mark.anyio
async def test_get_run_asks_everyone_once_then_only_the_owner(stack: Stack) -> None:
    run_id = stack.subsystems["payments"].engine.data.runs[0].id

    first = await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run_id), stack.ctx())
    assert isinstance(first, runs.GetRunResponse)
    assert first.run.id == run_id
    assert all("GetRun" in s.calls for s in stack.subsystems.values())  # broadcast on a miss

    for s in stack.subsystems.values():
        s.calls.clear()
    await stack.gateway.runs.get_run_steps(runs.GetRunStepsRequest(run_id=run_id), stack.ctx())
    assert stack.subsystems["payments"].calls == ["GetRunSteps"]
    assert stack.subsystems["orders"].calls == stack.subsystems["shipping"].calls == []


@pytest.mark.anyio
async def test_an_action_on_an_unknown_run_reaches_its_owner_alone(stack: Stack) -> None:
    owner = stack.subsystems["shipping"]
    run = next(r for r in owner.engine.data.runs if r.status == types_pb2.RUN_STATUS_RUNNING)

    await stack.gateway.runs.cancel_run(runs.CancelRunRequest(run_id=run.id), stack.ctx())

    assert owner.calls == ["GetRun", "CancelRun"]
    for name in ("orders", "payments"):
        assert stack.subsystems[name].calls == ["GetRun"]  # located, never asked to act


@pytest.mark.anyio
async def test_unknown_run_is_not_found_only_when_everyone_answered(stack: Stack) -> None:
    with pytest.raises(ConnectError) as everyone_said_so:
        await stack.gateway.runs.get_run(runs.GetRunRequest(run_id="no-such-run"), stack.ctx())
    assert everyone_said_so.value.code == Code.NOT_FOUND

    stack.subsystems["orders"].down = True
    with pytest.raises(ConnectError) as one_could_not_say:
        await stack.gateway.runs.get_run(runs.GetRunRequest(run_id="no-such-run"), stack.ctx())
    assert one_could_not_say.value.code == Code.UNAVAILABLE
    assert "orders" in one_could_not_say.value.message


@pytest.mark.anyio
async def test_a_failing_subsystem_is_named_and_the_others_answer(stack: Stack) -> None:
    stack.subsystems["payments"].down = True
    ctx = stack.ctx()

    page = await stack.gateway.runs.list_runs(
        runs.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=100)), ctx
    )

    assert {run.subsystem_id for run in page.runs} == {"orders", "shipping"}
    assert _partial_failures(ctx) == "payments: unavailable"


@pytest.mark.anyio
async def test_a_slow_subsystem_is_cut_at_the_callers_deadline(stack: Stack) -> None:
    stack.subsystems["orders"].delays["ListSubsystems"] = 3.0
    ctx = stack.ctx(timeout=0.5)

    answer = await stack.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), ctx)

    assert {s.subsystem.id for s in answer.subsystems} == {"orders", "payments", "shipping"}
    assert _partial_failures(ctx) == "orders: timed out"
    remaining = ctx.remaining()
    assert remaining is not None and remaining > 0  # answered before the deadline


@pytest.mark.anyio
async def test_stale_subsystems_are_not_asked_and_are_named(stack: Stack) -> None:
    instance = stack.registry.get("shipping")
    assert instance is not None
    stack.registry.mark_stale("shipping", instance.epoch)
    ctx = stack.ctx()

    await stack.gateway.runs.list_runs(runs.ListRunsRequest(), ctx)

    assert stack.subsystems["shipping"].calls == []
    assert _partial_failures(ctx) == "shipping: stale"


@pytest.mark.anyio
async def test_removal_forgets_the_run_owners_of_that_subsystem(stack: Stack) -> None:
    run_id = stack.subsystems["orders"].engine.data.runs[0].id
    await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run_id), stack.ctx())
    assert stack.gateway.router.owners.get(run_id) == "orders"

    stack.registry.deregister("orders")

    assert stack.gateway.router.owners.get(run_id) is None
    assert stack.gateway.pool.get("orders") is None
