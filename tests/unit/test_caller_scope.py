"""What a caller may see and do reaches every proxied call (in-process).

The scope here is a plain table (flowwatch_gateway.access decides it from a policy
file in production): reads fan out only to the subsystems it may read, per-run
calls outside it are permission_denied, actions need the right to act, and every
action attempt is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.inprocess import Stack, Subsystem, probed

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class TableScope:
    reads: frozenset[str]
    acts: frozenset[str] = frozenset()
    admin: bool = False
    who: str = "user:alice"

    def may_read(self, subsystem_id: str) -> bool:
        return subsystem_id in self.reads

    def may_act(self, subsystem_id: str) -> bool:
        return subsystem_id in self.acts


@dataclass
class Recorded:
    actions: list[tuple[str, str, str | None, str]] = field(default_factory=list)

    def action(
        self, ctx: CallContext, rpc: str, run_id: str, owner: str | None, result: str
    ) -> None:
        self.actions.append((rpc, run_id, owner, result))


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Stack, Recorded]]:
    names = ("orders", "payments")
    subsystems = {
        name: Subsystem(InMemoryEngine.demo(name, seed=seed, now=NOW, run_count=20))
        for seed, name in enumerate(names)
    }
    transports = {f"http://{name}.test": s.transport() for name, s in subsystems.items()}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transports[endpoint])

    registry = InMemoryRegistry()
    recorded = Recorded()  # in the audit trail's place
    gateway = Gateway(
        registry, GatewayConfig(upstream_timeout=2.0), connect=connect, actions=recorded
    )
    for name in names:
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=name,
                flowwatch_endpoint=f"http://{name}.test",
                capabilities=types_pb2.Capabilities(),
                workflows=subsystems[name].engine.data.workflows,
            )
        )
    await probed(subsystems.values())
    try:
        yield Stack(gateway, registry, subsystems), recorded
    finally:
        await gateway.aclose()


VIEWER = TableScope(reads=frozenset({"orders"}))
OPERATOR = TableScope(reads=frozenset({"orders"}), acts=frozenset({"orders"}))


def ctx(scope: TableScope) -> CallContext:
    return CallContext.with_timeout(5.0, scope)


def _running(stack: Stack, name: str) -> str:
    engine = stack.subsystems[name].engine
    return next(r.id for r in engine.data.runs if r.status == types_pb2.RUN_STATUS_RUNNING)


@pytest.mark.anyio
async def test_lists_cover_only_what_the_caller_may_read(stack: tuple[Stack, Recorded]) -> None:
    built, _ = stack
    page = await built.gateway.runs.list_runs(
        runs.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=100)), ctx(VIEWER)
    )
    assert {run.subsystem_id for run in page.runs} == {"orders"}
    assert page.pagination.total_count == 20
    assert "ListRuns" not in built.subsystems["payments"].calls
    listed = await built.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), ctx(VIEWER))
    assert [s.subsystem.id for s in listed.subsystems] == ["orders"]
    assert "gateway.endpoint" not in listed.subsystems[0].subsystem.metadata
    workflows = await built.gateway.workflows.list_workflows(
        wf.ListWorkflowsRequest(pagination=types_pb2.PaginationRequest(limit=100)), ctx(VIEWER)
    )
    assert {w.subsystem_id for w in workflows.workflows} == {"orders"}
    throughput = await built.gateway.analytics.get_throughput(
        analytics.GetThroughputRequest(), ctx(VIEWER)
    )
    everything = await built.gateway.analytics.get_throughput(
        analytics.GetThroughputRequest(), CallContext.with_timeout(5.0)
    )
    assert sum(b.total for b in throughput.buckets) < sum(b.total for b in everything.buckets)


@pytest.mark.anyio
async def test_an_admin_sees_endpoints(stack: tuple[Stack, Recorded]) -> None:
    built, _ = stack
    admin = TableScope(reads=frozenset({"orders", "payments"}), admin=True)
    listed = await built.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), ctx(admin))
    assert all("gateway.endpoint" in s.subsystem.metadata for s in listed.subsystems)


@pytest.mark.anyio
async def test_a_run_outside_the_scope_is_permission_denied(
    stack: tuple[Stack, Recorded],
) -> None:
    built, _ = stack
    theirs = built.subsystems["payments"].engine.data.runs[0].id
    with pytest.raises(ConnectError) as refused:
        await built.gateway.runs.get_run(runs.GetRunRequest(run_id=theirs), ctx(VIEWER))
    assert refused.value.code == Code.PERMISSION_DENIED
    assert "subsystem payments" not in refused.value.message  # nothing of what it may not see
    with pytest.raises(ConnectError) as hidden:
        await built.gateway.workflows.get_subsystem(
            wf.GetSubsystemRequest(subsystem_id="payments"), ctx(VIEWER)
        )
    assert hidden.value.code == Code.PERMISSION_DENIED


@pytest.mark.anyio
async def test_actions_need_the_right_to_act_and_every_attempt_is_recorded(
    stack: tuple[Stack, Recorded],
) -> None:
    built, recorded = stack
    run_id = _running(built, "orders")
    with pytest.raises(ConnectError) as refused:
        await built.gateway.runs.cancel_run(runs.CancelRunRequest(run_id=run_id), ctx(VIEWER))
    assert refused.value.code == Code.PERMISSION_DENIED
    assert "operator role" in refused.value.message
    assert "CancelRun" not in built.subsystems["orders"].calls
    await built.gateway.runs.cancel_run(runs.CancelRunRequest(run_id=run_id), ctx(OPERATOR))
    assert recorded.actions == [
        ("CancelRun", run_id, "orders", "permission_denied"),
        ("CancelRun", run_id, "orders", "ok"),
    ]


@pytest.mark.anyio
async def test_a_bulk_action_acts_only_where_the_caller_may(
    stack: tuple[Stack, Recorded],
) -> None:
    built, recorded = stack
    ours, theirs = _running(built, "orders"), _running(built, "payments")
    answer = await built.gateway.runs.bulk_cancel(
        runs.BulkCancelRequest(run_ids=[ours, theirs, "nobodys-run"]), ctx(OPERATOR)
    )
    results = {r.run_id: r for r in answer.results}
    assert results[ours].success
    assert not results[theirs].success and "outside your scope" in results[theirs].error
    assert not results["nobodys-run"].success
    assert "BulkCancel" not in built.subsystems["payments"].calls
    assert sorted(recorded.actions) == sorted(
        [
            ("BulkCancel", ours, "orders", "ok"),
            ("BulkCancel", theirs, "payments", "permission_denied"),
            ("BulkCancel", "nobodys-run", None, "not_found"),
        ]
    )
