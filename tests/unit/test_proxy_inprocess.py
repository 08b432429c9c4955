"""The proxy's routing and failure rules, in-process: demo engines behind an ASGI transport.

The gateway's upstream pool takes a `connect` factory; here it hands out clients whose
transport calls a demo subsystem's ASGI app directly, so routing, first success,
partial failure and deadlines are checked without starting a process. The socket
tests in tests/e2e cover the real leg.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import PARTIAL_FAILURE_HEADER, CallContext
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.inprocess import Stack, Subsystem, probed, register

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RUNS_EACH = 40


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    subsystems = {
        name: Subsystem(InMemoryEngine.demo(name, seed=seed, now=NOW, run_count=RUNS_EACH))
        for seed, name in enumerate(("orders", "payments", "shipping"))
    }
    transports = {f"http://{name}.test": s.transport() for name, s in subsystems.items()}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transports[endpoint])

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=2.0), connect=connect)
    for name in subsystems:
        register(registry, name)
    await probed(subsystems.values())
    try:
        yield Stack(gateway, registry, subsystems)
    finally:
        await gateway.aclose()


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
async def test_a_removed_owner_is_not_asked_even_while_cached(stack: Stack) -> None:
    orders = stack.subsystems["orders"]
    run_id = orders.engine.data.runs[0].id
    await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run_id), stack.ctx())
    assert stack.gateway.per_run.owners.get(run_id) == "orders"

    stack.registry.deregister("orders")
    orders.calls.clear()

    with pytest.raises(ConnectError) as gone:
        await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run_id), stack.ctx())
    assert gone.value.code == Code.NOT_FOUND  # the others were asked and do not have it
    assert orders.calls == []
    assert stack.gateway.pool.get("orders") is None


@pytest.mark.anyio
async def test_the_owners_own_error_reaches_the_caller_with_its_code_and_words(
    stack: Stack,
) -> None:
    """Go subsystems answer every refusal as internal; the words are what matter."""
    owner = stack.subsystems["orders"]
    run = owner.engine.data.runs[0]
    stack.gateway.per_run.owners.settle(run.id, "orders")
    owner.answers["CancelRun"] = ("internal", "invalid RunState: from Completed | to Cancelled")

    with pytest.raises(ConnectError) as refused:
        await stack.gateway.runs.cancel_run(runs.CancelRunRequest(run_id=run.id), stack.ctx())

    assert refused.value.code == Code.INTERNAL
    assert refused.value.message == "invalid RunState: from Completed | to Cancelled"


@pytest.mark.anyio
async def test_an_unreachable_owner_is_named_in_the_gateways_words(stack: Stack) -> None:
    run = stack.subsystems["orders"].engine.data.runs[0]
    stack.gateway.per_run.owners.settle(run.id, "orders")
    stack.subsystems["orders"].down = True

    with pytest.raises(ConnectError) as unreachable:
        await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run.id), stack.ctx())

    assert unreachable.value.code == Code.UNAVAILABLE
    assert unreachable.value.message == "subsystem orders unavailable"  # no socket details


@pytest.mark.anyio
async def test_a_non_owner_refusing_the_id_does_not_fail_the_lookup(stack: Stack) -> None:
    """An engine that validates ids answers invalid_argument for ids that are not its own."""
    stack.subsystems["orders"].answers["GetRun"] = ("invalid_argument", "run_id is not a UUID")
    stack.subsystems["orders"].delays["GetRun"] = 0.0
    run = stack.subsystems["shipping"].engine.data.runs[0]
    stack.subsystems["shipping"].delays["GetRun"] = 0.2  # the owner answers last

    answer = await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=run.id), stack.ctx())

    assert isinstance(answer, runs.GetRunResponse)
    assert answer.run.id == run.id


@pytest.mark.anyio
async def test_a_spent_deadline_ends_as_deadline_exceeded(stack: Stack) -> None:
    for s in stack.subsystems.values():
        s.delays["ListRuns"] = 1.0
    with pytest.raises(ConnectError) as late:
        await stack.gateway.runs.list_runs(runs.ListRunsRequest(), stack.ctx(timeout=0.3))
    assert late.value.code == Code.DEADLINE_EXCEEDED


@pytest.mark.anyio
async def test_get_subsystem_asks_that_subsystem_alone_and_lists_only_its_workflows(
    stack: Stack,
) -> None:
    answer = await stack.gateway.workflows.get_subsystem(
        wf.GetSubsystemRequest(subsystem_id="payments"), stack.ctx()
    )

    assert answer.subsystem.subsystem.id == "payments"
    assert {w.subsystem_id for w in answer.workflows} == {"payments"}
    assert stack.subsystems["payments"].calls == ["ListSubsystems"]
    assert stack.subsystems["orders"].calls == stack.subsystems["shipping"].calls == []


@pytest.mark.anyio
async def test_list_workflows_is_answered_from_the_registry(stack: Stack) -> None:
    answer = await stack.gateway.workflows.list_workflows(wf.ListWorkflowsRequest(), stack.ctx())

    assert {w.id for w in answer.workflows} == {"wf-orders", "wf-payments", "wf-shipping"}
    assert all(s.calls == [] for s in stack.subsystems.values())


@pytest.mark.anyio
async def test_a_stale_subsystem_keeps_its_last_stats_and_says_it_is_unreachable(
    stack: Stack,
) -> None:
    before = await stack.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), stack.ctx())
    payments_before = next(s for s in before.subsystems if s.subsystem.id == "payments")
    assert payments_before.active_runs > 0
    instance = stack.registry.get("payments")
    assert instance is not None
    stack.registry.mark_stale("payments", instance.epoch)
    ctx = stack.ctx()

    after = await stack.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), ctx)

    payments = next(s for s in after.subsystems if s.subsystem.id == "payments")
    assert payments.subsystem.name.endswith(" — unreachable")
    assert payments.active_runs == payments_before.active_runs  # not zeroed
    assert payments.failed_last_hour == payments_before.failed_last_hour
    assert payments.subsystem.metadata["gateway.stats_as_of"]
    assert "payments: stale" in _partial_failures(ctx)
