"""Who owns a run or a workflow, against a subsystem that lies about it (in-process).

The attacker is a real demo engine holding copies of the victim's runs, so it lists
them, answers GetRun for them and would happily cancel them: every way the
gateway could learn an owner is tried, and the victim's runs must never reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo.dataset import build_dataset
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.per_run import MAX_BULK_LOOKUPS, PARALLEL_LOOKUPS
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry
from tests.support.inprocess import Stack, Subsystem, probed

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RUNS_EACH = 12
ACTIONS = ("CancelRun", "PauseRun", "ResumeRun", "RetryRun", "BulkCancel", "BulkRetry")


def _engine(subsystem_id: str, seed: int, stolen: Sequence[types_pb2.Run] = ()) -> InMemoryEngine:
    data = build_dataset(subsystem_id, seed=seed, now=NOW, run_count=RUNS_EACH)
    for run in stolen:
        copy = types_pb2.Run()
        copy.CopyFrom(run)
        data.runs.append(copy)
    return InMemoryEngine(data, clock=lambda: NOW)


async def _stack(
    engines: dict[str, InMemoryEngine], workflows: dict[str, list[str]] | None = None
) -> Stack:
    subsystems = {name: Subsystem(engine) for name, engine in engines.items()}
    transports = {f"http://{name}.test": s.transport() for name, s in subsystems.items()}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transports[endpoint])

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=2.0), connect=connect)
    for name in subsystems:
        ids = (workflows or {}).get(name, [f"wf-{name}"])
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=name,
                flowwatch_endpoint=f"http://{name}.test",
                capabilities=types_pb2.Capabilities(),
                workflows=[types_pb2.WorkflowDefinition(id=i) for i in ids],
            )
        )
    await probed(subsystems.values())
    return Stack(gateway, registry, subsystems)


@pytest.fixture
async def victim_runs() -> list[types_pb2.Run]:
    return list(_engine("victim", seed=1).data.runs[:4])


@pytest.fixture
async def stack(victim_runs: list[types_pb2.Run]) -> AsyncIterator[Stack]:
    engines = {
        "victim": _engine("victim", seed=1),
        "attacker": _engine("attacker", seed=2, stolen=victim_runs),
    }
    built = await _stack(engines)
    try:
        yield built
    finally:
        await built.gateway.aclose()


def _actions_seen(stack: Stack, name: str) -> list[str]:
    return [rpc for rpc in stack.subsystems[name].calls if rpc in ACTIONS]


async def _list_everything(stack: Stack) -> list[types_pb2.Run]:
    seen: list[types_pb2.Run] = []
    cursor = ""
    while True:
        page = await stack.gateway.runs.list_runs(
            runs.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=5, cursor=cursor)),
            stack.ctx(),
        )
        seen.extend(page.runs)
        cursor = page.pagination.next_cursor
        if not cursor:
            return seen


async def _refused(stack: Stack, run_id: str) -> ConnectError:
    with pytest.raises(ConnectError) as refused:
        await stack.gateway.runs.cancel_run(runs.CancelRunRequest(run_id=run_id), stack.ctx())
    return refused.value


@pytest.mark.anyio
async def test_a_run_listed_by_two_subsystems_is_refused_naming_both(
    stack: Stack, victim_runs: list[types_pb2.Run]
) -> None:
    await _list_everything(stack)
    for run in victim_runs:
        refusal = await _refused(stack, run.id)
        assert refusal.code == Code.FAILED_PRECONDITION
        assert "attacker and victim" in refusal.message
    assert _actions_seen(stack, "attacker") == []
    assert _actions_seen(stack, "victim") == []


@pytest.mark.anyio
async def test_a_fast_false_answer_to_a_lookup_does_not_win_the_run(
    stack: Stack, victim_runs: list[types_pb2.Run]
) -> None:
    stack.subsystems["victim"].delays["GetRun"] = 0.2  # the attacker answers first
    refusal = await _refused(stack, victim_runs[0].id)
    assert refusal.code == Code.FAILED_PRECONDITION
    with pytest.raises(ConnectError) as read:
        await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=victim_runs[1].id), stack.ctx())
    assert read.value.code == Code.FAILED_PRECONDITION
    assert _actions_seen(stack, "attacker") == []


@pytest.mark.anyio
async def test_a_run_claimed_by_one_subsystem_goes_to_it(stack: Stack) -> None:
    own = stack.subsystems["victim"].engine.data.runs[-1]
    answer = await stack.gateway.runs.get_run(runs.GetRunRequest(run_id=own.id), stack.ctx())
    assert isinstance(answer, runs.GetRunResponse)
    assert answer.run.subsystem_id == "victim"
    for subsystem in stack.subsystems.values():
        subsystem.calls.clear()
    await stack.gateway.runs.get_run_steps(runs.GetRunStepsRequest(run_id=own.id), stack.ctx())
    assert stack.subsystems["victim"].calls == ["GetRunSteps"]
    assert stack.subsystems["attacker"].calls == []


@pytest.mark.anyio
async def test_rows_naming_another_registration_are_shown_under_their_sender(
    stack: Stack, victim_runs: list[types_pb2.Run]
) -> None:
    for run in stack.subsystems["attacker"].engine.data.runs:
        run.subsystem_id = "victim"  # the attacker's rows pretend to be the victim's
    listed = await _list_everything(stack)
    attackers_own = {run.id for run in stack.subsystems["attacker"].engine.data.runs}
    attackers_own -= {run.id for run in victim_runs}
    shown = {run.id: run.subsystem_id for run in listed if run.id in attackers_own}
    assert shown == dict.fromkeys(attackers_own, "attacker")


@pytest.mark.anyio
async def test_an_id_no_registration_holds_may_be_named_by_a_federated_gateway() -> None:
    child_data = build_dataset("eu-gateway", seed=3, now=NOW, run_count=RUNS_EACH)
    for run in child_data.runs:
        run.subsystem_id = "eu-orders"  # a subsystem registered with the child gateway
    built = await _stack({"eu-gateway": InMemoryEngine(child_data, clock=lambda: NOW)})
    try:
        listed = await _list_everything(built)
        assert {run.subsystem_id for run in listed} == {"eu-orders"}
        answer = await built.gateway.runs.get_run(
            runs.GetRunRequest(run_id=listed[0].id), built.ctx()
        )
        assert isinstance(answer, runs.GetRunResponse)
        assert answer.run.subsystem_id == "eu-orders"
    finally:
        await built.gateway.aclose()


@pytest.mark.anyio
async def test_search_hits_and_trace_spans_claim_nothing(
    stack: Stack, victim_runs: list[types_pb2.Run]
) -> None:
    """What a subsystem says about other runs never makes it their owner."""
    owners = stack.gateway.per_run.owners
    hits = await stack.gateway.search.search(
        search_pb.SearchRequest(query=victim_runs[0].workflow_id), stack.ctx()
    )
    assert any(hit.run_id in {run.id for run in victim_runs} for hit in hits.results)
    traced = next(run for run in victim_runs if run.trace.trace_id)
    await stack.gateway.workflows.get_trace(
        wf.GetTraceRequest(trace_id=traced.trace.trace_id), stack.ctx()
    )
    assert all(run.id not in owners for run in victim_runs)


@pytest.mark.anyio
async def test_bulk_actions_never_send_a_contested_run_to_either_claimant(
    stack: Stack, victim_runs: list[types_pb2.Run]
) -> None:
    own = [run.id for run in stack.subsystems["victim"].engine.data.runs[-3:]]
    ids = [run.id for run in victim_runs] + own
    answer = await stack.gateway.runs.bulk_cancel(
        runs.BulkCancelRequest(run_ids=ids, reason="test"), stack.ctx()
    )
    results = {result.run_id: result for result in answer.results}
    assert [result.run_id for result in answer.results] == ids
    for run in victim_runs:
        assert not results[run.id].success
        assert "claimed by subsystems attacker and victim" in results[run.id].error
    assert _actions_seen(stack, "attacker") == []
    assert _actions_seen(stack, "victim") == ["BulkCancel"]


def _with_workflow(
    engine_id: str, seed: int, definition: types_pb2.WorkflowDefinition, graph: types_pb2.Graph
) -> InMemoryEngine:
    data = build_dataset(engine_id, seed=seed, now=NOW, run_count=RUNS_EACH)
    data.workflows.append(definition)
    data.graphs[definition.id] = graph
    return InMemoryEngine(data, clock=lambda: NOW)


@pytest.mark.anyio
@pytest.mark.parametrize("same", [True, False], ids=["same-answer", "forged-answer"])
async def test_a_workflow_two_subsystems_answer_for_is_given_only_when_they_agree(
    same: bool,
) -> None:
    victim = _engine("victim", seed=1)
    definition = victim.data.workflows[0]
    copy = types_pb2.WorkflowDefinition()
    copy.CopyFrom(definition)
    if not same:
        copy.name = "forged by the attacker"
    attacker = _with_workflow("attacker", 2, copy, victim.data.graphs[definition.id])
    built = await _stack(
        {"victim": victim, "attacker": attacker},
        {"victim": [definition.id], "attacker": [definition.id]},
    )
    try:
        request = wf.GetWorkflowRequest(workflow_id=definition.id)
        if same:
            answer = await built.gateway.workflows.get_workflow(request, built.ctx())
            assert answer.workflow.name == definition.name
        else:
            with pytest.raises(ConnectError) as refused:
                await built.gateway.workflows.get_workflow(request, built.ctx())
            assert refused.value.code == Code.FAILED_PRECONDITION
            assert "attacker and victim" in refused.value.message
        graph = await built.gateway.workflows.get_graph(
            wf.GetGraphRequest(workflow_id=definition.id), built.ctx()
        )
        assert graph.graph == victim.data.graphs[definition.id]
    finally:
        await built.gateway.aclose()


@pytest.mark.anyio
async def test_a_bulk_action_asks_a_silent_subsystem_in_one_wave_only() -> None:
    engines = {"victim": _engine("victim", seed=1), "silent": _engine("silent", seed=2)}
    built = await _stack(engines)
    built.subsystems["silent"].delays["GetRun"] = 30.0  # never answers within the deadline
    try:
        ids = [run.id for run in built.subsystems["victim"].engine.data.runs]
        answer = await built.gateway.runs.bulk_retry(
            runs.BulkRetryRequest(run_ids=ids), built.ctx(timeout=1.0)
        )
        assert len(answer.results) == len(ids)
        assert built.subsystems["silent"].calls.count("GetRun") <= PARALLEL_LOOKUPS
    finally:
        await built.gateway.aclose()


@pytest.mark.anyio
async def test_a_bulk_action_looks_up_a_bounded_number_of_unknown_runs(stack: Stack) -> None:
    ids = [f"unknown-{number}" for number in range(MAX_BULK_LOOKUPS + 50)]
    answer = await stack.gateway.runs.bulk_cancel(runs.BulkCancelRequest(run_ids=ids), stack.ctx())
    assert [result.run_id for result in answer.results] == ids
    assert not any(result.success for result in answer.results)
    over = [r for r in answer.results if "more than" in r.error]
    assert len(over) == 50
    for name in ("victim", "attacker"):
        assert stack.subsystems[name].calls.count("GetRun") == MAX_BULK_LOOKUPS


@pytest.mark.anyio
async def test_a_subsystem_reporting_itself_as_another_is_listed_under_its_own_id(
    stack: Stack,
) -> None:
    stack.subsystems["attacker"].engine.data.subsystem.id = "victim"
    listed = await stack.gateway.workflows.list_subsystems(wf.ListSubsystemsRequest(), stack.ctx())
    by_id = {summary.subsystem.id: summary for summary in listed.subsystems}
    assert set(by_id) == {"victim", "attacker"}
    assert by_id["victim"].subsystem.metadata["gateway.instance"] == "victim"
