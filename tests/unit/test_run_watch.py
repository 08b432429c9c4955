"""WatchRuns through the gateway follows the registry and polls subsystems without streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest.testing import ASGITransport
from starlette.applications import Starlette

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.api.services import flowwatch_routes
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.run_watch import run_changes
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
pytestmark = pytest.mark.anyio


def _run(run_id: str, status: types.RunStatus = types.RUN_STATUS_RUNNING) -> types.Run:
    return types.Run(id=run_id, status=status, current_step="a")


def test_the_first_poll_is_a_baseline_and_later_ones_become_events() -> None:
    events, known = run_changes(None, [_run("r2"), _run("r1")], NOW)
    assert events == []

    page = [_run("r3"), _run("r2", types.RUN_STATUS_SUCCEEDED), _run("r1")]
    events, known = run_changes(known, page, NOW)

    assert [(e.run.id, e.event_type) for e in events] == [
        ("r2", stream.RUN_EVENT_TYPE_COMPLETED),
        ("r3", stream.RUN_EVENT_TYPE_CREATED),
    ]
    assert set(known) == {"r1", "r2", "r3"}
    assert run_changes(known, page, NOW)[0] == []  # nothing changed, nothing said


class NoStreams(InMemoryEngine):
    """Like a subsystem served by the Go FlowWatch server: no StreamService."""

    def watch_runs(
        self, request: stream.WatchRunsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunEvent]:
        raise ConnectError(Code.UNIMPLEMENTED, "WatchRuns is not supported")


async def test_watch_runs_polls_subsystems_without_streams_and_adds_late_registrations() -> None:
    engines: dict[str, InMemoryEngine] = {
        "orders": InMemoryEngine.demo("orders", seed=1, now=NOW, run_count=20),
        "legacy": NoStreams.demo("legacy", seed=2, now=NOW, run_count=20),
    }
    transports = {
        f"http://{name}.test": ASGITransport(Starlette(routes=flowwatch_routes(engine)))
        for name, engine in engines.items()
    }

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transports[endpoint])

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(watch_poll_interval=0.05), connect=connect)

    def register(name: str) -> None:
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=name,
                flowwatch_endpoint=f"http://{name}.test",
                capabilities=types.Capabilities(),
                workflows=[types.WorkflowDefinition(id=f"wf-{name}")],
            )
        )

    register("orders")  # legacy registers only after the stream is open
    events: asyncio.Queue[stream.RunEvent] = asyncio.Queue()

    async def watch() -> None:
        async for event in gateway.streams.watch_runs(
            stream.WatchRunsRequest(), CallContext.with_timeout(None)
        ):
            events.put_nowait(event)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.sleep(0.1)
        register("legacy")
        await asyncio.sleep(0.2)  # the first poll sets the baseline
        legacy_run = next(
            r for r in engines["legacy"].data.runs if r.status == types.RUN_STATUS_RUNNING
        )
        orders_run = next(
            r for r in engines["orders"].data.runs if r.status == types.RUN_STATUS_RUNNING
        )
        ctx = CallContext.with_timeout(5.0)
        await gateway.runs.cancel_run(runs.CancelRunRequest(run_id=legacy_run.id), ctx)
        await gateway.runs.cancel_run(runs.CancelRunRequest(run_id=orders_run.id), ctx)

        seen: dict[str, stream.RunEvent] = {}
        async with asyncio.timeout(10):
            while {legacy_run.id, orders_run.id} - set(seen):
                event = await events.get()
                seen[event.run.id] = event
        assert seen[legacy_run.id].event_type == stream.RUN_EVENT_TYPE_COMPLETED
        assert seen[legacy_run.id].run.status == types.RUN_STATUS_CANCELED
        assert seen[legacy_run.id].run.subsystem_id == "legacy"
        assert seen[orders_run.id].run.status == types.RUN_STATUS_CANCELED
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await gateway.aclose()


async def test_a_re_registered_subsystem_is_re_attached_to_open_streams() -> None:
    engine = InMemoryEngine.demo("orders", seed=1, now=NOW, run_count=20)
    transport = ASGITransport(Starlette(routes=flowwatch_routes(engine)))
    opened: list[str] = []

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        opened.append(instance_id)
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transport)

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(), connect=connect)
    request = gateway_service_pb2.RegisterRequest(
        subsystem_id="orders",
        flowwatch_endpoint="http://orders.test",
        capabilities=types.Capabilities(),
        workflows=[types.WorkflowDefinition(id="wf")],
    )
    registry.register(request)
    events: asyncio.Queue[stream.RunEvent] = asyncio.Queue()

    async def watch() -> None:
        async for event in gateway.streams.watch_runs(
            stream.WatchRunsRequest(), CallContext.with_timeout(None)
        ):
            events.put_nowait(event)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.sleep(0.1)
        registry.register(request)  # the subsystem reconnected: a new registration
        await asyncio.sleep(0.1)
        run = next(r for r in engine.data.runs if r.status == types.RUN_STATUS_RUNNING)
        await gateway.runs.cancel_run(
            runs.CancelRunRequest(run_id=run.id), CallContext.with_timeout(5.0)
        )
        async with asyncio.timeout(10):
            event = await events.get()
        assert event.run.id == run.id
        assert events.empty()  # one reader: the old one was detached, not doubled
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await gateway.aclose()
