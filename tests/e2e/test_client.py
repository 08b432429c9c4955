"""connect_to_gateway against a real pyvoy gateway, with real local FlowWatch APIs.

The client runs in the test's event loop; the local API it describes itself from is a
real uvicorn server on loopback; what the gateway made of it is read back through
its public API (ListSubsystems / GetSubsystem), the way the UI sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from flowwatch_gateway import (
    Backoff,
    CallContext,
    ClientOptions,
    ClientStatus,
    ConnectionState,
    EngineAdapter,
    connect_to_gateway,
    connect_to_gateway_in_thread,
    flowwatch_routes,
)
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.engine import InMemoryEngine, paginate
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.processes import free_port
from flowwatch_gateway.subsystem.client import GatewayClient, _Ending, _SessionResult
from tests.support.harness import (
    TEST_API_KEY,
    GatewayProcess,
    await_state,
    register_client,
    register_request,
    subsystem_states,
)

# Short delays so reconnects happen within a fast test.
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5, stable_after=60.0)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# A subsystem that announces fixed (empty) workflows, capabilities and metadata, so
# the client never needs a local FlowWatch API; the endpoint only has to be valid.
NO_LOCAL_API: dict[str, Any] = {
    "local_endpoint": "http://127.0.0.1:9/flowwatch",
    "workflows": [],
    "capabilities": types_pb2.Capabilities(),
    "metadata": {},
}


# --- helpers -------------------------------------------------------------------------------


class WorkflowCatalog(EngineAdapter):
    """A local FlowWatch API that only lists workflows (in pages) and capabilities.

    Every other rpc, GetSubsystem included, is unimplemented, as on a minimal server.
    """

    def __init__(self, subsystem_id: str, count: int) -> None:
        self.subsystem_id = subsystem_id
        self.workflows = [self.workflow(index) for index in range(count)]
        self.list_calls = 0

    def workflow(self, index: int) -> types_pb2.WorkflowDefinition:
        return types_pb2.WorkflowDefinition(
            id=f"{self.subsystem_id}-wf-{index:03d}",
            name=f"Workflow {index}",
            subsystem_id=self.subsystem_id,
        )

    async def list_workflows(
        self, request: wf.ListWorkflowsRequest, ctx: CallContext
    ) -> wf.ListWorkflowsResponse:
        self.list_calls += 1
        page, pagination = paginate(self.workflows, request.pagination)
        return wf.ListWorkflowsResponse(workflows=page, pagination=pagination)

    async def get_capabilities(
        self, request: wf.GetCapabilitiesRequest, ctx: CallContext
    ) -> wf.GetCapabilitiesResponse:
        return wf.GetCapabilitiesResponse(
            capabilities=types_pb2.Capabilities(retry_run=True, cancel_run=True)
        )


@contextlib.asynccontextmanager
async def local_api(adapter: EngineAdapter) -> AsyncIterator[str]:
    """Serve `adapter` with uvicorn on a loopback port in this event loop; yields its URL."""
    port = free_port()
    app = Starlette(routes=list(flowwatch_routes(adapter)))
    if isinstance(adapter, InMemoryEngine):
        app = create_demo_app(adapter)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class StatusLog:
    """Collects every ClientStatus (from any thread) and waits for a matching one."""

    def __init__(self) -> None:
        self.events: list[ClientStatus] = []
        self._lock = threading.Lock()

    def __call__(self, status: ClientStatus) -> None:
        with self._lock:
            self.events.append(status)

    def of(self, state: ConnectionState) -> list[ClientStatus]:
        with self._lock:
            return [event for event in self.events if event.state is state]

    async def wait_for(
        self, state: ConnectionState, count: int = 1, within: float = 10.0
    ) -> ClientStatus:
        deadline = time.monotonic() + within
        while len(self.of(state)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} x {state} within {within}s: {self.events}")
            await asyncio.sleep(0.02)
        return self.of(state)[count - 1]


@contextlib.asynccontextmanager
async def running(
    options: ClientOptions,
) -> AsyncIterator[asyncio.Task[None]]:
    """connect_to_gateway as a task, cancelled (and awaited) when the block ends."""
    task = asyncio.create_task(connect_to_gateway(options))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def states(url: str) -> dict[str, str]:
    """subsystem_states off the event loop: the gateway may call a local API served here."""
    return await asyncio.to_thread(subsystem_states, url)


def get_subsystem(url: str, subsystem_id: str) -> dict[str, object]:
    response = httpx.post(
        f"{url}/flowwatch.v1.WorkflowService/GetSubsystem",
        json={"subsystemId": subsystem_id},
        headers={"Connect-Protocol-Version": "1"},
        timeout=30.0,
    )
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


def workflow_ids(subsystem: dict[str, object]) -> list[str]:
    workflows = subsystem.get("workflows", [])
    assert isinstance(workflows, list)
    return sorted(w["id"] for w in workflows)


def stale_reason(gateway: GatewayProcess, subsystem_id: str) -> str:
    """The reason the gateway logged when it last marked `subsystem_id` stale."""
    marker = f"subsystem stale: id={subsystem_id} "
    logs = gateway.logs()
    assert marker in logs, f"{subsystem_id} was never marked stale:\n{logs[-3000:]}"
    return logs.rsplit(marker, 1)[1].splitlines()[0]


# --- the retry policy ------------------------------------------------------------------------


def test_backoff_ceilings_double_up_to_the_maximum_and_jitter_stays_below() -> None:
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30  # a long outage must not overflow
    rng = random.Random(7)
    for failures in range(8):
        delays = [backoff.failure_delay(failures, rng) for _ in range(200)]
        assert all(0 <= delay <= backoff.ceiling(failures) for delay in delays)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(delays) < backoff.ceiling(failures) * 0.25
        assert max(delays) > backoff.ceiling(failures) * 0.75


def test_disconnect_delays_spread_over_zero_to_the_initial_delay() -> None:
    backoff = Backoff(initial=2.0, maximum=30.0)
    rng = random.Random(11)
    delays = [backoff.disconnect_delay(rng) for _ in range(200)]
    assert all(0 <= delay <= backoff.initial for delay in delays)
    # A drained gateway's subsystems must not all come back in the same instant.
    assert min(delays) < backoff.initial * 0.25
    assert max(delays) > backoff.initial * 0.75


class FractionRandom(random.Random):
    """`uniform` answers a fixed fraction of the range it is asked for, and records the range."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a + (b - a) * self.fraction


class DrainingGateway(GatewayClient):
    """A client whose every connection ends with a DisconnectCommand, without any network."""

    async def _one_connection(self) -> _SessionResult:
        return _SessionResult(_Ending.DISCONNECTED, "gateway is draining")


@pytest.mark.anyio
async def test_every_disconnect_command_reconnects_after_a_jittered_delay() -> None:
    backoff = Backoff(initial=0.004, maximum=1.0)
    rng = FractionRandom(0.25)
    statuses = StatusLog()
    options = ClientOptions(
        gateway_url="http://127.0.0.1:9",
        subsystem_id="drained",
        **NO_LOCAL_API,
        backoff=backoff,
        on_state_change=statuses,
    )
    task = asyncio.create_task(DrainingGateway(options, rng=rng).run())
    try:
        await statuses.wait_for(ConnectionState.BACKING_OFF, count=3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    waits = statuses.of(ConnectionState.BACKING_OFF)[:3]
    assert all(wait.reason == "gateway is draining" for wait in waits)
    # Drawn from [0, initial] each time, never the fixed initial delay.
    assert rng.ranges[:3] == [(0.0, backoff.initial)] * 3
    assert [wait.delay for wait in waits] == [backoff.initial * 0.25] * 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Backoff(initial=0), "0 < initial <= maximum"),
        (lambda: Backoff(initial=5, maximum=1), "0 < initial <= maximum"),
        (lambda: Backoff(multiplier=0.5), "multiplier must be at least 1"),
        (
            lambda: ClientOptions("127.0.0.1:8091", "orders", "http://127.0.0.1:9101"),
            "gateway_url must be an absolute http(s) URL",
        ),
        (
            lambda: ClientOptions("http://127.0.0.1:8091", "orders", "grpc://orders:9101"),
            "local_endpoint 'grpc://orders:9101' would be refused by the gateway: it is not an "
            "absolute http(s) URL",
        ),
        (
            lambda: ClientOptions("http://127.0.0.1:8091", " ", "http://127.0.0.1:9101"),
            "subsystem_id is required",
        ),
    ],
)
def test_bad_settings_are_refused_with_a_message_naming_the_problem(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_the_api_key_is_not_part_of_the_options_repr() -> None:
    options = ClientOptions(
        "http://127.0.0.1:8091", "orders", "http://127.0.0.1:9101", api_key="s3cret-key"
    )
    assert "s3cret-key" not in repr(options)


# --- against a real gateway ------------------------------------------------------------------


@pytest.mark.anyio
async def test_registers_every_page_of_local_workflows_and_keeps_answering_pings(
    fast_gateway: GatewayProcess,
) -> None:
    sid = unique_id("paged")
    catalog = WorkflowCatalog(sid, count=250)  # three pages of at most 100
    statuses = StatusLog()
    async with local_api(catalog) as endpoint:
        options = ClientOptions(
            gateway_url=fast_gateway.url,
            subsystem_id=sid,
            local_endpoint=endpoint,
            api_key=TEST_API_KEY,
            backoff=FAST_BACKOFF,
            on_state_change=statuses,
        )
        async with running(options):
            connected = await statuses.wait_for(ConnectionState.CONNECTED)
            assert connected.heartbeat_interval == pytest.approx(0.2)
            assert catalog.list_calls == 3
            subsystem = await asyncio.to_thread(get_subsystem, fast_gateway.url, sid)
            assert workflow_ids(subsystem) == sorted(w.id for w in catalog.workflows)
            summary = subsystem["subsystem"]
            assert isinstance(summary, dict)
            # GetSubsystem is unimplemented locally: the id stands in for the name.
            assert summary["subsystem"]["name"] == sid

            # 1.5 s is more than 7 heartbeats: only answered pings keep it connected.
            await asyncio.sleep(1.5)
            assert (await states(fast_gateway.url))[sid] == "connected"
            assert [s.state for s in statuses.events] == [
                ConnectionState.CONNECTING,
                ConnectionState.CONNECTED,
            ]


@pytest.mark.anyio
async def test_demo_engine_name_and_metadata_are_announced(fast_gateway: GatewayProcess) -> None:
    sid = unique_id("demo")
    engine = InMemoryEngine.demo(sid, seed=5, run_count=20)
    statuses = StatusLog()
    async with local_api(engine) as endpoint:
        options = ClientOptions(
            gateway_url=fast_gateway.url,
            subsystem_id=sid,
            local_endpoint=endpoint,
            api_key=TEST_API_KEY,
            on_state_change=statuses,
        )
        async with running(options):
            await statuses.wait_for(ConnectionState.CONNECTED)
            subsystem = await asyncio.to_thread(get_subsystem, fast_gateway.url, sid)
    summary = subsystem["subsystem"]
    assert isinstance(summary, dict)
    assert summary["subsystem"]["name"] == engine.data.subsystem.name
    assert summary["subsystem"]["metadata"]["seed"] == "5"
    assert workflow_ids(subsystem) == sorted(w.id for w in engine.data.workflows)


@pytest.mark.anyio
async def test_disconnect_command_reconnects_and_announces_current_workflows(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("replaced")
    catalog = WorkflowCatalog(sid, count=3)
    statuses = StatusLog()
    async with local_api(catalog) as endpoint:
        options = ClientOptions(
            gateway_url=url,
            subsystem_id=sid,
            local_endpoint=endpoint,
            api_key=TEST_API_KEY,
            backoff=FAST_BACKOFF,
            on_state_change=statuses,
        )
        async with running(options):
            await statuses.wait_for(ConnectionState.CONNECTED)
            catalog.workflows.append(catalog.workflow(3))
            # A second registration of the same id makes the gateway disconnect the first.
            intruder = register_request(sid, api_key=TEST_API_KEY, endpoint=endpoint)
            started = time.monotonic()
            async with register_client(url, intruder) as second:
                await second.wait_for("registered")
                backing_off = await statuses.wait_for(ConnectionState.BACKING_OFF)
                assert backing_off.reason.startswith("replaced by a newer registration")
                assert 0 <= backing_off.delay <= FAST_BACKOFF.initial
                # ... and the client comes back, replacing the intruder in turn.
                await statuses.wait_for(ConnectionState.CONNECTED, count=2)
                print(
                    f"DisconnectCommand -> registered again after {time.monotonic() - started:.2f}s"
                )
                await second.wait_for("disconnect")
            subsystem = await asyncio.to_thread(get_subsystem, url, sid)
            assert workflow_ids(subsystem) == sorted(w.id for w in catalog.workflows)
            assert len(workflow_ids(subsystem)) == 4
            assert (await states(url))[sid] == "connected"


@pytest.mark.anyio
async def test_bad_api_key_is_retried_only_at_the_maximum_delay(
    fast_gateway: GatewayProcess, caplog: pytest.LogCaptureFixture
) -> None:
    sid = unique_id("badkey")
    statuses = StatusLog()
    backoff = Backoff(initial=0.01, maximum=0.8)
    options = ClientOptions(
        gateway_url=fast_gateway.url,
        subsystem_id=sid,
        api_key="not-the-key",
        **NO_LOCAL_API,
        name="Bad key",
        description="presents the wrong key",
        backoff=backoff,
        on_state_change=statuses,
    )
    window = 2.0
    with caplog.at_level(logging.DEBUG, logger="flowwatch_gateway.subsystem.client"):
        async with running(options):
            await asyncio.sleep(window)
    attempts = statuses.of(ConnectionState.CONNECTING)
    rejections = statuses.of(ConnectionState.REJECTED)
    print(f"bad key: {len(attempts)} attempts in {window}s with a {backoff.maximum}s maximum")
    # Attempts at 0, ~0.8, ~1.6 s; with the 10 ms failure backoff it would be ~100.
    assert 2 <= len(attempts) <= 3
    assert len(rejections) == len(attempts)
    assert all(r.reason == "invalid API key" for r in rejections)
    delays = [s.delay for s in statuses.of(ConnectionState.BACKING_OFF)]
    assert delays and all(delay == backoff.maximum for delay in delays)
    assert not statuses.of(ConnectionState.CONNECTED)
    assert sid not in await states(fast_gateway.url)
    assert statuses.events[-1].state is ConnectionState.STOPPED
    assert "not-the-key" not in caplog.text
    assert "rejected" in caplog.text


@pytest.mark.anyio
async def test_cancel_half_closes_the_stream_and_the_gateway_sees_it_end(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("cancel")
    statuses = StatusLog()
    options = ClientOptions(
        gateway_url=url,
        subsystem_id=sid,
        api_key=TEST_API_KEY,
        **NO_LOCAL_API,
        on_state_change=statuses,
    )
    task = asyncio.create_task(connect_to_gateway(options))
    await statuses.wait_for(ConnectionState.CONNECTED)
    await await_state(url, sid, "connected", within=5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancel_took = time.monotonic() - started
    to_stale = await await_state(url, sid, "stale", within=5)
    print(f"cancel returned after {cancel_took:.2f}s; gateway marked stale {to_stale:.2f}s later")
    assert cancel_took < 3.0
    assert statuses.events[-1].state is ConnectionState.STOPPED
    # Ended by the client, not detected by missed heartbeats.
    assert "reason=register stream ended" in stale_reason(fast_gateway, sid)


@pytest.mark.anyio
async def test_unreachable_gateway_backs_off_with_growing_jittered_delays() -> None:
    statuses = StatusLog()
    backoff = Backoff(initial=0.02, maximum=0.16)
    options = ClientOptions(
        gateway_url=f"http://127.0.0.1:{free_port()}",
        subsystem_id="nowhere",
        **NO_LOCAL_API,
        backoff=backoff,
        on_state_change=statuses,
    )
    async with running(options):
        await statuses.wait_for(ConnectionState.BACKING_OFF, count=6, within=10)
    waits = statuses.of(ConnectionState.BACKING_OFF)[:6]
    for failures, status in enumerate(waits):
        assert 0 <= status.delay <= backoff.ceiling(failures)
        assert status.reason.startswith("unavailable"), status.reason
    assert [s.attempt for s in waits] == [1, 2, 3, 4, 5, 6]


@pytest.mark.anyio
async def test_unreachable_local_api_fails_the_attempt_before_dialing(
    fast_gateway: GatewayProcess,
) -> None:
    sid = unique_id("nolocal")
    statuses = StatusLog()
    local = f"http://127.0.0.1:{free_port()}"
    options = ClientOptions(
        gateway_url=fast_gateway.url,
        subsystem_id=sid,
        local_endpoint=local,
        api_key=TEST_API_KEY,
        backoff=FAST_BACKOFF,
        on_state_change=statuses,
    )
    async with running(options):
        waiting = await statuses.wait_for(ConnectionState.BACKING_OFF)
    assert waiting.reason.startswith(f"local FlowWatch API at {local} failed: unavailable")
    assert sid not in await states(fast_gateway.url)


@pytest.mark.anyio
async def test_thread_helper_registers_and_stop_leaves_the_gateway(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("thread")
    statuses = StatusLog()
    handle = connect_to_gateway_in_thread(
        gateway_url=url,
        subsystem_id=sid,
        api_key=TEST_API_KEY,
        **NO_LOCAL_API,
        on_state_change=statuses,
    )
    try:
        connected = await statuses.wait_for(ConnectionState.CONNECTED)
        assert handle.status == connected
        await await_state(url, sid, "connected", within=5)
    finally:
        stopped = await asyncio.to_thread(handle.stop, 5.0)
    assert stopped
    assert handle.status.state is ConnectionState.STOPPED
    await await_state(url, sid, "stale", within=5)
    assert "reason=register stream ended" in stale_reason(fast_gateway, sid)
