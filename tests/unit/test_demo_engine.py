"""The demo engine through the real Connect stack (generated clients, real app)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pyqwest
import pytest
import uvicorn
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from pyqwest.testing import ASGITransport

from flowwatch_gateway.api.ordering import resolve_order, sort_runs
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.dataset import to_timestamp
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_connect,
    analytics_service_pb2,
    run_service_connect,
    run_service_pb2,
    search_service_connect,
    search_service_pb2,
    stream_service_connect,
    stream_service_pb2,
    types_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FINISHED = (
    types_pb2.RUN_STATUS_SUCCEEDED,
    types_pb2.RUN_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELED,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> InMemoryEngine:
    return InMemoryEngine.demo("orders", seed=11, now=NOW)


@dataclass
class Clients:
    workflows: workflow_service_connect.WorkflowServiceClient
    runs: run_service_connect.RunServiceClient
    analytics: analytics_service_connect.AnalyticsServiceClient
    streams: stream_service_connect.StreamServiceClient
    search: search_service_connect.SearchServiceClient


@asynccontextmanager
async def connect(http: pyqwest.Client, address: str, **options: Any) -> AsyncIterator[Clients]:
    common: dict[str, Any] = {"http_client": http, "send_compression": None, **options}
    yield Clients(
        workflows=workflow_service_connect.WorkflowServiceClient(address, **common),
        runs=run_service_connect.RunServiceClient(address, **common),
        analytics=analytics_service_connect.AnalyticsServiceClient(address, **common),
        streams=stream_service_connect.StreamServiceClient(address, **common),
        search=search_service_connect.SearchServiceClient(address, **common),
    )


@pytest.fixture
async def api(engine: InMemoryEngine) -> AsyncIterator[Clients]:
    async with connect(pyqwest.Client(ASGITransport(create_demo_app(engine))), "http://demo") as c:
        yield c


async def expect_error(code: Code, call: Callable[[], Any], *fragments: str) -> ConnectError:
    with pytest.raises(ConnectError) as caught:
        await call()
    assert caught.value.code == code, caught.value.message
    for fragment in fragments:
        assert fragment in caught.value.message
    return caught.value


async def all_runs(
    api: Clients, request: run_service_pb2.ListRunsRequest, limit: int = 37
) -> tuple[list[types_pb2.Run], int]:
    collected: list[types_pb2.Run] = []
    cursor = ""
    total = -1
    while True:
        request.pagination.CopyFrom(types_pb2.PaginationRequest(cursor=cursor, limit=limit))
        page = await api.runs.list_runs(request)
        assert len(page.runs) <= limit
        collected.extend(page.runs)
        total = page.pagination.total_count
        cursor = page.pagination.next_cursor
        if not cursor:
            return collected, total


def runs_of(engine: InMemoryEngine) -> list[types_pb2.Run]:
    return list(engine.data.runs)


# --- ListRuns ----------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("order_by", ["", "started_at", "duration", "status"])
@pytest.mark.parametrize("descending", [False, True])
async def test_paging_yields_every_run_once_in_order(
    api: Clients, engine: InMemoryEngine, order_by: str, descending: bool
) -> None:
    request = run_service_pb2.ListRunsRequest(order_by=order_by, descending=descending)
    got, total = await all_runs(api, request)
    assert total == len(engine.data.runs) == len(got)
    assert len({run.id for run in got}) == len(got)
    field, direction = resolve_order(order_by, descending)
    assert [run.id for run in got] == [run.id for run in sort_runs(got, field, direction)]
    if order_by == "":
        starts = [run.started_at.ToNanoseconds() for run in got]
        assert starts == sorted(starts, reverse=True), "empty order_by means newest first"


@pytest.mark.anyio
async def test_page_size_defaults_to_20_and_is_clamped_to_100(api: Clients) -> None:
    first = await api.runs.list_runs(run_service_pb2.ListRunsRequest())
    assert len(first.runs) == 20
    assert first.pagination.next_cursor == "20"
    big = await api.runs.list_runs(
        run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=5000))
    )
    assert len(big.runs) == 100


@pytest.mark.anyio
async def test_invalid_cursor_and_order_are_invalid_argument(api: Clients) -> None:
    bad_cursor = run_service_pb2.ListRunsRequest(
        pagination=types_pb2.PaginationRequest(cursor="abc")
    )
    await expect_error(Code.INVALID_ARGUMENT, lambda: api.runs.list_runs(bad_cursor), "'abc'")
    bad_order = run_service_pb2.ListRunsRequest(order_by="colour")
    await expect_error(Code.INVALID_ARGUMENT, lambda: api.runs.list_runs(bad_order), "order_by")


def _filter_cases(
    runs: list[types_pb2.Run],
) -> list[tuple[str, run_service_pb2.RunFilter, set[str]]]:
    failed_or_paused = (types_pb2.RUN_STATUS_FAILED, types_pb2.RUN_STATUS_PAUSED)
    some_foreign = next(
        run.foreign_id
        for run in runs
        if sum(other.foreign_id == run.foreign_id for other in runs) > 1
    )
    linked = next(run for run in runs if run.trace.additional_trace_ids)
    linked_trace = linked.trace.additional_trace_ids[0]
    pivot = sorted(run.started_at.ToNanoseconds() for run in runs)[len(runs) // 2]
    end = sorted(run.started_at.ToNanoseconds() for run in runs)[3 * len(runs) // 4]
    window = types_pb2.TimeRange()
    getattr(window, "from").FromNanoseconds(pivot)
    window.to.FromNanoseconds(end)
    return [
        (
            "workflow_ids",
            run_service_pb2.RunFilter(workflow_ids=["health-check", "orders-reconcile"]),
            {r.id for r in runs if r.workflow_id in ("health-check", "orders-reconcile")},
        ),
        (
            "statuses",
            run_service_pb2.RunFilter(statuses=failed_or_paused),
            {r.id for r in runs if r.status in failed_or_paused},
        ),
        (
            "time_range",
            run_service_pb2.RunFilter(time_range=window),
            {r.id for r in runs if pivot <= r.started_at.ToNanoseconds() < end},
        ),
        (
            "foreign_id",
            run_service_pb2.RunFilter(foreign_id=some_foreign),
            {r.id for r in runs if r.foreign_id == some_foreign},
        ),
        (
            "subsystem_ids",
            run_service_pb2.RunFilter(subsystem_ids=["orders", "x"]),
            {r.id for r in runs},
        ),
        ("other subsystem", run_service_pb2.RunFilter(subsystem_ids=["payments"]), set()),
        (
            "trace_id",
            run_service_pb2.RunFilter(trace_id=linked_trace),
            {
                r.id
                for r in runs
                if r.trace.trace_id == linked_trace or linked_trace in r.trace.additional_trace_ids
            },
        ),
        (
            "metadata_match",
            run_service_pb2.RunFilter(metadata_match={"region": "eu-west", "tier": "pro"}),
            {
                r.id
                for r in runs
                if r.metadata.get("region") == "eu-west" and r.metadata.get("tier") == "pro"
            },
        ),
    ]


@pytest.mark.anyio
async def test_every_filter_field(api: Clients, engine: InMemoryEngine) -> None:
    runs = runs_of(engine)
    for name, run_filter, expected in _filter_cases(runs):
        got, total = await all_runs(api, run_service_pb2.ListRunsRequest(filter=run_filter), 50)
        assert {run.id for run in got} == expected, name
        assert total == len(expected), name
        if name not in ("subsystem_ids", "other subsystem"):
            assert 0 < len(expected) < len(runs), f"{name} case does not discriminate"
    trace_case = next(case for case in _filter_cases(runs) if case[0] == "trace_id")
    assert len(trace_case[2]) >= 2, "shared trace must match its own run and the linked one"


@pytest.mark.anyio
async def test_time_range_is_half_open(api: Clients, engine: InMemoryEngine) -> None:
    run = runs_of(engine)[100]
    at = types_pb2.TimeRange()
    getattr(at, "from").CopyFrom(run.started_at)
    included = await api.runs.list_runs(
        run_service_pb2.ListRunsRequest(filter=run_service_pb2.RunFilter(time_range=at))
    )
    assert run.id in {r.id for r in (await all_runs(api, included_request(at)))[0]}
    assert included.pagination.total_count > 0
    before = types_pb2.TimeRange(to=run.started_at)
    assert run.id not in {r.id for r in (await all_runs(api, included_request(before)))[0]}


def included_request(time_range: types_pb2.TimeRange) -> run_service_pb2.ListRunsRequest:
    return run_service_pb2.ListRunsRequest(filter=run_service_pb2.RunFilter(time_range=time_range))


# --- WorkflowService ---------------------------------------------------------------------
@pytest.mark.anyio
async def test_workflows_graphs_and_not_found(api: Clients) -> None:
    listed = await api.workflows.list_workflows(workflow_service_pb2.ListWorkflowsRequest())
    ids = [definition.id for definition in listed.workflows]
    assert ids == sorted(ids)
    assert {"health-check", "data-retention", "orders-intake", "orders-reconcile"} == set(ids)
    assert listed.pagination.total_count == 4
    assert listed.pagination.next_cursor == ""
    paged = await api.workflows.list_workflows(
        workflow_service_pb2.ListWorkflowsRequest(pagination=types_pb2.PaginationRequest(limit=3))
    )
    assert paged.pagination.next_cursor == "3"
    got = await api.workflows.get_workflow(
        workflow_service_pb2.GetWorkflowRequest(workflow_id="orders-intake")
    )
    assert got.workflow.engine == "flowwatch-demo"
    graph = await api.workflows.get_graph(
        workflow_service_pb2.GetGraphRequest(workflow_id="orders-intake")
    )
    assert graph.graph.workflow_id == "orders-intake"
    assert len(graph.graph.nodes) == 9
    await expect_error(
        Code.NOT_FOUND,
        lambda: api.workflows.get_graph(workflow_service_pb2.GetGraphRequest(workflow_id="nope")),
        "'nope'",
    )
    await expect_error(
        Code.NOT_FOUND,
        lambda: api.workflows.get_workflow(
            workflow_service_pb2.GetWorkflowRequest(workflow_id="payments-intake")
        ),
        "payments-intake",
    )


@pytest.mark.anyio
async def test_subsystem_summary_and_capabilities(api: Clients, engine: InMemoryEngine) -> None:
    runs = runs_of(engine)
    listed = await api.workflows.list_subsystems(workflow_service_pb2.ListSubsystemsRequest())
    (summary,) = listed.subsystems
    assert summary.subsystem.id == "orders"
    assert summary.workflow_count == 4
    active = (
        types_pb2.RUN_STATUS_PENDING,
        types_pb2.RUN_STATUS_RUNNING,
        types_pb2.RUN_STATUS_PAUSED,
    )
    assert summary.active_runs == sum(run.status in active for run in runs) > 0
    hour_ago = to_timestamp(NOW - timedelta(hours=1)).ToNanoseconds()
    recent = [
        r for r in runs if r.HasField("finished_at") and r.finished_at.ToNanoseconds() >= hour_ago
    ]
    failed = sum(r.status == types_pb2.RUN_STATUS_FAILED for r in recent)
    assert summary.failed_last_hour == failed
    assert summary.error_rate_last_hour == pytest.approx(failed / len(recent))

    detail = await api.workflows.get_subsystem(
        workflow_service_pb2.GetSubsystemRequest(subsystem_id="orders")
    )
    assert len(detail.workflows) == 4
    await expect_error(
        Code.NOT_FOUND,
        lambda: api.workflows.get_subsystem(
            workflow_service_pb2.GetSubsystemRequest(subsystem_id="payments")
        ),
        "'payments'",
    )
    caps = (
        await api.workflows.get_capabilities(workflow_service_pb2.GetCapabilitiesRequest())
    ).capabilities
    assert caps.retry_run and caps.cancel_run and caps.skip_step and caps.streaming
    assert caps.search.enabled and caps.search.engine == "demo-substring"


@pytest.mark.anyio
async def test_get_trace_lists_this_subsystems_spans(api: Clients, engine: InMemoryEngine) -> None:
    members = [
        run
        for run in runs_of(engine)
        if run.trace.trace_id == "trace-0004" or "trace-0004" in run.trace.additional_trace_ids
    ]
    trace = await api.workflows.get_trace(
        workflow_service_pb2.GetTraceRequest(trace_id="trace-0004")
    )
    assert trace.trace_id == "trace-0004"
    assert trace.subsystem_count == 1
    assert {span.run.id for span in trace.spans} == {run.id for run in members}
    root = next(span for span in trace.spans if span.run.trace.trace_id == "trace-0004")
    assert root.span_id == "span-orders-0004"
    assert root.parent_span_id == ""
    assert root.steps
    assert min(span.offset.ToNanoseconds() for span in trace.spans) == 0
    assert trace.total_duration.ToNanoseconds() >= max(
        span.offset.ToNanoseconds() + span.duration.ToNanoseconds() for span in trace.spans
    )
    await expect_error(
        Code.NOT_FOUND,
        lambda: api.workflows.get_trace(
            workflow_service_pb2.GetTraceRequest(trace_id="trace-9999")
        ),
        "trace-9999",
    )


# --- RunService reads --------------------------------------------------------------------
@pytest.mark.anyio
async def test_run_details_timeline_and_logs(api: Clients, engine: InMemoryEngine) -> None:
    run = next(r for r in runs_of(engine) if r.status == types_pb2.RUN_STATUS_FAILED)
    got = await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=run.id))
    assert got.run == run
    steps = await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=run.id))
    assert list(steps.steps) == engine.data.steps[run.id]
    assert steps.steps[-1].status == types_pb2.STEP_STATUS_FAILED
    timeline = await api.runs.get_run_timeline(run_service_pb2.GetRunTimelineRequest(run_id=run.id))
    assert timeline.total_duration == run.duration
    started = [s for s in steps.steps if s.HasField("started_at")]
    assert [e.step_name for e in timeline.entries] == [s.step_name for s in started]
    for entry, execution in zip(timeline.entries, started, strict=True):
        assert (
            entry.offset.ToNanoseconds()
            == execution.started_at.ToNanoseconds() - run.started_at.ToNanoseconds()
        )
    assert timeline.entries[-1].error.message

    logs = engine.data.logs[run.id]
    errors = await api.runs.get_run_logs(
        run_service_pb2.GetRunLogsRequest(run_id=run.id, levels=[types_pb2.LOG_LEVEL_ERROR])
    )
    assert [e.line_number for e in errors.logs] == [
        e.line_number for e in logs if e.level == types_pb2.LOG_LEVEL_ERROR
    ]
    first_step = logs[0].step_name
    page = await api.runs.get_run_logs(
        run_service_pb2.GetRunLogsRequest(
            run_id=run.id,
            step_name=first_step,
            pagination=types_pb2.PaginationRequest(limit=2, cursor="1"),
        )
    )
    expected = [e.line_number for e in logs if e.step_name == first_step][1:3]
    assert [e.line_number for e in page.logs] == expected
    for rpc in (
        lambda: api.runs.get_run(run_service_pb2.GetRunRequest(run_id="ghost-1")),
        lambda: api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id="ghost-1")),
        lambda: api.runs.get_run_timeline(run_service_pb2.GetRunTimelineRequest(run_id="ghost-1")),
        lambda: api.runs.get_run_logs(run_service_pb2.GetRunLogsRequest(run_id="ghost-1")),
    ):
        await expect_error(Code.NOT_FOUND, rpc, "'ghost-1'")


# --- RunService actions ------------------------------------------------------------------
def first_with(engine: InMemoryEngine, status: types_pb2.RunStatus) -> types_pb2.Run:
    return next(r for r in runs_of(engine) if r.status == status)


@pytest.mark.anyio
async def test_retry_run_creates_a_visible_running_copy(
    api: Clients, engine: InMemoryEngine
) -> None:
    failed = first_with(engine, types_pb2.RUN_STATUS_FAILED)
    before = len(engine.data.runs)
    new_id = (
        await api.runs.retry_run(run_service_pb2.RetryRunRequest(run_id=failed.id))
    ).new_run_id
    assert new_id not in {r.id for r in runs_of(engine)[:before]}
    retried = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=new_id))).run
    assert retried.status == types_pb2.RUN_STATUS_RUNNING
    assert (retried.workflow_id, retried.foreign_id) == (failed.workflow_id, failed.foreign_id)
    assert retried.trace.trace_id == failed.trace.trace_id
    assert retried.trace.span_id != failed.trace.span_id
    assert retried.metadata["retry_of"] == failed.id
    assert retried.started_at == to_timestamp(NOW)
    listed = await api.runs.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(statuses=[types_pb2.RUN_STATUS_RUNNING]),
            pagination=types_pb2.PaginationRequest(limit=100),
        )
    )
    assert new_id in {r.id for r in listed.runs}
    steps = (await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=new_id))).steps
    assert steps[0].status == types_pb2.STEP_STATUS_RUNNING
    assert retried.current_step == steps[0].step_name

    running = first_with(engine, types_pb2.RUN_STATUS_RUNNING)
    await expect_error(
        Code.FAILED_PRECONDITION,
        lambda: api.runs.retry_run(run_service_pb2.RetryRunRequest(run_id=running.id)),
        running.id,
    )
    await expect_error(
        Code.NOT_FOUND,
        lambda: api.runs.retry_run(run_service_pb2.RetryRunRequest(run_id="nope")),
        "'nope'",
    )


@pytest.mark.anyio
async def test_retry_from_step_keeps_earlier_results(api: Clients, engine: InMemoryEngine) -> None:
    failed = next(
        r
        for r in runs_of(engine)
        if r.status == types_pb2.RUN_STATUS_FAILED
        and r.workflow_id.endswith("reconcile")
        and engine.data.steps[r.id][-1].step_name != "fetch-ledger"
    )
    old_steps = engine.data.steps[failed.id]
    failing = old_steps[-1].step_name
    response = await api.runs.retry_from_step(
        run_service_pb2.RetryFromStepRequest(run_id=failed.id, step_name=failing)
    )
    new_steps = (
        await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=response.new_run_id))
    ).steps
    names = [s.step_name for s in new_steps]
    cut = names.index(failing)
    for kept in new_steps[:cut]:
        original = [s for s in old_steps if s.step_name == kept.step_name][-1]
        assert kept.output == original.output
        assert kept.status == types_pb2.STEP_STATUS_SUCCEEDED
        assert kept.run_id == response.new_run_id
    assert new_steps[cut].status == types_pb2.STEP_STATUS_RUNNING
    assert all(s.status == types_pb2.STEP_STATUS_PENDING for s in new_steps[cut + 1 :])
    run = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=response.new_run_id))).run
    assert run.current_step == failing
    await expect_error(
        Code.INVALID_ARGUMENT,
        lambda: api.runs.retry_from_step(
            run_service_pb2.RetryFromStepRequest(run_id=failed.id, step_name="teleport")
        ),
        "'teleport'",
    )


@pytest.mark.anyio
async def test_cancel_pause_resume_change_state(api: Clients, engine: InMemoryEngine) -> None:
    running = first_with(engine, types_pb2.RUN_STATUS_RUNNING)
    await api.runs.pause_run(run_service_pb2.PauseRunRequest(run_id=running.id))
    got = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=running.id))).run
    assert got.status == types_pb2.RUN_STATUS_PAUSED
    await expect_error(
        Code.FAILED_PRECONDITION,
        lambda: api.runs.pause_run(run_service_pb2.PauseRunRequest(run_id=running.id)),
        "RUN_STATUS_PAUSED",
    )
    await api.runs.resume_run(run_service_pb2.ResumeRunRequest(run_id=running.id))
    got = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=running.id))).run
    assert got.status == types_pb2.RUN_STATUS_RUNNING
    steps = (
        await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=running.id))
    ).steps
    assert [s.step_name for s in steps if s.status == types_pb2.STEP_STATUS_RUNNING] == [
        got.current_step
    ]

    await api.runs.cancel_run(run_service_pb2.CancelRunRequest(run_id=running.id, reason="test"))
    got = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=running.id))).run
    assert got.status == types_pb2.RUN_STATUS_CANCELED
    assert got.metadata["cancel_reason"] == "test"
    assert got.finished_at == to_timestamp(NOW)
    steps = (
        await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=running.id))
    ).steps
    assert not [s for s in steps if s.status == types_pb2.STEP_STATUS_RUNNING]
    await expect_error(
        Code.FAILED_PRECONDITION,
        lambda: api.runs.cancel_run(run_service_pb2.CancelRunRequest(run_id=running.id)),
        "already finished",
    )
    await expect_error(
        Code.FAILED_PRECONDITION,
        lambda: api.runs.resume_run(run_service_pb2.ResumeRunRequest(run_id=running.id)),
        "only paused runs",
    )
    canceled = await api.runs.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(statuses=[types_pb2.RUN_STATUS_CANCELED]),
            pagination=types_pb2.PaginationRequest(limit=100),
        )
    )
    assert running.id in {r.id for r in canceled.runs}


@pytest.mark.anyio
async def test_skip_step_marks_skipped_and_advances(api: Clients, engine: InMemoryEngine) -> None:
    running = first_with(engine, types_pb2.RUN_STATUS_RUNNING)
    current = running.current_step
    await api.runs.skip_step(
        run_service_pb2.SkipStepRequest(run_id=running.id, step_name=current, reason="stuck")
    )
    steps = (
        await api.runs.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=running.id))
    ).steps
    assert [s.status for s in steps if s.step_name == current][-1] == types_pb2.STEP_STATUS_SKIPPED
    got = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=running.id))).run
    assert got.current_step != current
    if got.status == types_pb2.RUN_STATUS_RUNNING:
        assert [s.step_name for s in steps if s.status == types_pb2.STEP_STATUS_RUNNING] == [
            got.current_step
        ]
    else:
        assert got.status == types_pb2.RUN_STATUS_SUCCEEDED
    await expect_error(
        Code.FAILED_PRECONDITION,
        lambda: api.runs.skip_step(
            run_service_pb2.SkipStepRequest(run_id=running.id, step_name=current)
        ),
        "STEP_STATUS_SKIPPED",
    )
    await expect_error(
        Code.INVALID_ARGUMENT,
        lambda: api.runs.skip_step(
            run_service_pb2.SkipStepRequest(run_id=running.id, step_name="warp")
        ),
        "'warp'",
    )


@pytest.mark.anyio
async def test_bulk_actions_answer_per_id_in_order(api: Clients, engine: InMemoryEngine) -> None:
    failed = first_with(engine, types_pb2.RUN_STATUS_FAILED)
    pending = first_with(engine, types_pb2.RUN_STATUS_PENDING)
    retried = await api.runs.bulk_retry(
        run_service_pb2.BulkRetryRequest(run_ids=[pending.id, "missing", failed.id])
    )
    assert [(r.run_id, r.success) for r in retried.results] == [
        (pending.id, False),
        ("missing", False),
        (failed.id, True),
    ]
    assert retried.results[2].new_run_id
    assert "missing" in retried.results[1].error
    canceled = await api.runs.bulk_cancel(
        run_service_pb2.BulkCancelRequest(
            run_ids=[failed.id, pending.id, retried.results[2].new_run_id], reason="bulk"
        )
    )
    assert [r.success for r in canceled.results] == [False, True, True]
    assert "already finished" in canceled.results[0].error
    got = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=pending.id))).run
    assert got.status == types_pb2.RUN_STATUS_CANCELED


# --- Analytics ---------------------------------------------------------------------------
@pytest.mark.anyio
async def test_analytics_reflect_the_data_and_actions(api: Clients, engine: InMemoryEngine) -> None:
    request = analytics_service_pb2.GetThroughputRequest()
    buckets = (await api.analytics.get_throughput(request)).buckets
    assert len(buckets) == 24  # NOW is on the hour: [11:00 yesterday, 12:00 today)
    day_ago = to_timestamp(NOW - timedelta(hours=24)).ToNanoseconds()
    in_window = [r for r in runs_of(engine) if r.started_at.ToNanoseconds() >= day_ago]
    assert sum(b.total for b in buckets) == len(in_window)
    canceled_before = sum(b.canceled for b in buckets)

    await api.runs.cancel_run(
        run_service_pb2.CancelRunRequest(run_id=first_with(engine, types_pb2.RUN_STATUS_RUNNING).id)
    )
    buckets = (await api.analytics.get_throughput(request)).buckets
    assert sum(b.canceled for b in buckets) == canceled_before + 1

    rates = (
        await api.analytics.get_failure_rate(
            analytics_service_pb2.GetFailureRateRequest(
                filter=analytics_service_pb2.AnalyticsFilter(
                    workflow_id="orders-intake", granularity="1d"
                )
            )
        )
    ).buckets
    assert sum(b.failed_runs for b in rates) == sum(
        r.status == types_pb2.RUN_STATUS_FAILED and r.workflow_id == "orders-intake"
        for r in in_window
    )
    for bucket in rates:
        assert bucket.timestamp.seconds % 86400 == 0
    latency = (await api.analytics.get_latency(analytics_service_pb2.GetLatencyRequest())).buckets
    assert any(b.p95.ToNanoseconds() > 0 for b in latency)
    heatmap = await api.analytics.get_step_heatmap(analytics_service_pb2.GetStepHeatmapRequest())
    assert len(heatmap.cells) == len(heatmap.step_names) * len(heatmap.bucket_timestamps)
    durations = await api.analytics.get_step_duration(
        analytics_service_pb2.GetStepDurationRequest(workflow_id="data-retention")
    )
    assert {entry.step_name for entry in durations.steps} == {
        "select-expired",
        "archive",
        "purge",
        "verify",
    }
    assert [e.step_name for e in durations.steps if e.is_bottleneck] == ["archive"]
    other = await api.analytics.get_throughput(
        analytics_service_pb2.GetThroughputRequest(
            filter=analytics_service_pb2.AnalyticsFilter(subsystem_id="payments")
        )
    )
    assert sum(b.total for b in other.buckets) == 0
    await expect_error(
        Code.INVALID_ARGUMENT,
        lambda: api.analytics.get_throughput(
            analytics_service_pb2.GetThroughputRequest(
                filter=analytics_service_pb2.AnalyticsFilter(granularity="7m")
            )
        ),
        "granularity",
    )


# --- Streams -----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_watch_run_sends_current_state_then_changes(
    api: Clients, engine: InMemoryEngine
) -> None:
    running = first_with(engine, types_pb2.RUN_STATUS_RUNNING)
    with anyio.fail_after(10):
        events = api.streams.watch_run(stream_service_pb2.WatchRunRequest(run_id=running.id))
        first = await anext(events)
        assert first.event_type == stream_service_pb2.RUN_DETAIL_EVENT_TYPE_RUN_UPDATED
        assert first.run.status == types_pb2.RUN_STATUS_RUNNING
        await api.runs.cancel_run(run_service_pb2.CancelRunRequest(run_id=running.id))
        update = await anext(events)
        assert update.run.status == types_pb2.RUN_STATUS_CANCELED
        step_event = await anext(events)
        assert step_event.event_type == stream_service_pb2.RUN_DETAIL_EVENT_TYPE_STEP_UPDATED
        assert step_event.step.status == types_pb2.STEP_STATUS_CANCELED
        await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_watch_runs_snapshot_and_live_events(api: Clients, engine: InMemoryEngine) -> None:
    watched = (types_pb2.RUN_STATUS_PAUSED, types_pb2.RUN_STATUS_CANCELED)
    initial = [r for r in runs_of(engine) if r.status in watched]
    with anyio.fail_after(10):
        events = api.streams.watch_runs(
            stream_service_pb2.WatchRunsRequest(
                statuses=watched,
                include_initial_snapshot=True,
            )
        )
        snapshot = [await anext(events) for _ in initial]
        assert {e.run.id for e in snapshot} == {r.id for r in initial}
        assert {e.event_type for e in snapshot} == {stream_service_pb2.RUN_EVENT_TYPE_CREATED}
        running = first_with(engine, types_pb2.RUN_STATUS_RUNNING)
        await api.runs.pause_run(run_service_pb2.PauseRunRequest(run_id=running.id))
        update = await anext(events)
        assert (update.event_type, update.run.id) == (
            stream_service_pb2.RUN_EVENT_TYPE_UPDATED,
            running.id,
        )
        await api.runs.cancel_run(run_service_pb2.CancelRunRequest(run_id=running.id))
        done = await anext(events)
        assert done.event_type == stream_service_pb2.RUN_EVENT_TYPE_COMPLETED
        assert done.run.status == types_pb2.RUN_STATUS_CANCELED
        await events.aclose()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_watch_stats_emits_snapshots(api: Clients, engine: InMemoryEngine) -> None:
    with anyio.fail_after(10):
        events = api.streams.watch_stats(stream_service_pb2.WatchStatsRequest(interval_seconds=1))
        first = await anext(events)
        second = await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
    running = sum(r.status == types_pb2.RUN_STATUS_RUNNING for r in runs_of(engine))
    assert first.running == second.running == running
    assert first.timestamp == to_timestamp(NOW)


# --- Search ------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_search_filters_facets_and_paging(api: Clients, engine: InMemoryEngine) -> None:
    failed_ids = {r.id for r in runs_of(engine) if r.status == types_pb2.RUN_STATUS_FAILED}
    response = await api.search.search(
        search_service_pb2.SearchRequest(
            query="status:failed",
            scope=search_service_pb2.SEARCH_SCOPE_RUNS,
            pagination=types_pb2.PaginationRequest(limit=100),
        )
    )
    assert {r.run_id for r in response.results} == failed_ids
    assert response.pagination.total_count == len(failed_ids)
    assert dict(response.facets.status) == {"RUN_STATUS_FAILED": len(failed_ids)}

    foreign = runs_of(engine)[0].foreign_id
    everywhere = await api.search.search(
        search_service_pb2.SearchRequest(
            query=foreign, pagination=types_pb2.PaginationRequest(limit=100)
        )
    )
    kinds = {r.type for r in everywhere.results}
    assert search_service_pb2.SEARCH_RESULT_TYPE_RUN in kinds
    assert search_service_pb2.SEARCH_RESULT_TYPE_LOG in kinds
    assert all(r.context.foreign_id == foreign for r in everywhere.results)

    logs = await api.search.search(
        search_service_pb2.SearchRequest(
            query="level:error -workflow:health-check", scope=search_service_pb2.SEARCH_SCOPE_LOGS
        )
    )
    assert logs.results
    assert all(r.workflow_id != "health-check" for r in logs.results)
    await expect_error(
        Code.INVALID_ARGUMENT,
        lambda: api.search.search(search_service_pb2.SearchRequest(query="colour:red")),
        "colour",
    )


@pytest.mark.anyio
async def test_explain_suggest_stats_reindex(api: Clients, engine: InMemoryEngine) -> None:
    explained = await api.search.explain(
        search_service_pb2.ExplainRequest(raw_query='Status:x -workflow:a "connection reset"')
    )
    assert not explained.valid and "Status" in explained.error
    explained = await api.search.explain(
        search_service_pb2.ExplainRequest(raw_query='status:failed -workflow:a "connection reset"')
    )
    assert explained.valid
    assert explained.parsed.free_text == "connection reset"
    assert [(f.field, f.value, f.negated) for f in explained.parsed.filters] == [
        ("status", "failed", False),
        ("workflow", "a", True),
    ]
    assert explained.normalized_query == 'status:failed -workflow:a "connection reset"'
    assert not (
        await api.search.explain(search_service_pb2.ExplainRequest(raw_query='"open'))
    ).valid

    suggestions = await api.search.suggest(
        search_service_pb2.SuggestRequest(field="workflow", prefix="ORDERS-")
    )
    expected = {
        w: sum(r.workflow_id == w for r in runs_of(engine))
        for w in ("orders-intake", "orders-reconcile")
    }
    assert {s.value: s.count for s in suggestions.suggestions} == expected
    counts = [s.count for s in suggestions.suggestions]
    assert counts == sorted(counts, reverse=True)
    await expect_error(
        Code.INVALID_ARGUMENT,
        lambda: api.search.suggest(search_service_pb2.SuggestRequest(field="colour")),
        "colour",
    )

    stats = await api.search.get_index_stats(search_service_pb2.GetIndexStatsRequest())
    assert stats.indexed_runs == len(engine.data.runs)
    assert stats.indexed_log_lines == sum(len(v) for v in engine.data.logs.values())
    assert stats.index_size_bytes > 0
    queued = await api.search.reindex(search_service_pb2.ReindexRequest(workflow_id="health-check"))
    assert queued.runs_queued == sum(r.workflow_id == "health-check" for r in runs_of(engine))


# --- A real server, JSON, HTTP/1.1: the way the browser UI calls ------------------------
@pytest.mark.anyio
async def test_real_server_with_json_encoding(engine: InMemoryEngine) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_demo_app(engine), log_level="warning", lifespan="off")
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        for _ in range(500):  # up to 10 s for the server to bind and start
            if server.started:
                break
            await anyio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        http = pyqwest.Client()
        address = f"http://127.0.0.1:{port}"
        async with connect(http, address, codec=google_protobuf_json_codec()) as api:
            got, total = await all_runs(
                api, run_service_pb2.ListRunsRequest(order_by="duration"), limit=25
            )
            assert total == len(got) == len(engine.data.runs)
            failed = first_with(engine, types_pb2.RUN_STATUS_FAILED)
            run = (await api.runs.get_run(run_service_pb2.GetRunRequest(run_id=failed.id))).run
            assert run == failed
            await expect_error(
                Code.FAILED_PRECONDITION,
                lambda: api.runs.cancel_run(run_service_pb2.CancelRunRequest(run_id=failed.id)),
                "already finished",
            )
            await expect_error(
                Code.INVALID_ARGUMENT,
                lambda: api.runs.get_run(run_service_pb2.GetRunRequest()),
                "run_id is required",
            )
        health = await http.get(f"{address}/healthz")
        assert health.status == 200
        server.should_exit = True
