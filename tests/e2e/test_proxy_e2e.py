"""The UI-facing FlowWatch API through a real gateway in front of real demo subsystems.

Three demo subsystems (their own processes, HTTP/1.1-only uvicorn, registered like a
Go subsystem with no workflows or capabilities) sit behind a pyvoy gateway. Answers
through the gateway are checked against the subsystems' own answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pyqwest
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway.api.ordering import resolve_order, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_connect,
    analytics_service_pb2,
    run_service_connect,
    run_service_pb2,
    types_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)
from tests.support.harness import http2_client
from tests.support.upstreams import DemoStack, demo_stack, post

pytestmark = pytest.mark.anyio

SUBSYSTEMS = {"orders": 1, "payments": 2, "shipping": 3}


Stack = DemoStack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with demo_stack(
        SUBSYSTEMS, "--heartbeat", "500ms", "--grace-period", "3s", "--upstream-timeout", "1s"
    ) as running:
        yield running


@pytest.fixture
async def runs_client(stack: Stack) -> AsyncIterator[run_service_connect.RunServiceClient]:
    yield run_service_connect.RunServiceClient(
        stack.gateway.url, http_client=http2_client(), send_compression=None
    )


def direct(endpoint: str) -> pyqwest.Client:
    return pyqwest.Client(pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP1))


async def all_runs_direct(
    stack: Stack, request: run_service_pb2.ListRunsRequest
) -> list[tuple[str, types_pb2.Run]]:
    """Every matching run from each subsystem directly, paging with its own cursor."""
    found = []
    for sid, endpoint in stack.endpoints.items():
        client = run_service_connect.RunServiceClient(endpoint, http_client=direct(endpoint))
        cursor = ""
        while True:
            page_request = run_service_pb2.ListRunsRequest()
            page_request.CopyFrom(request)
            page_request.pagination.cursor = cursor
            page_request.pagination.limit = 100
            answer = await client.list_runs(page_request)
            found += [(sid, run) for run in answer.runs]
            cursor = answer.pagination.next_cursor
            if not cursor:
                break
    return found


async def page_through(
    client: run_service_connect.RunServiceClient,
    request: run_service_pb2.ListRunsRequest,
    limits: list[int],
) -> tuple[list[types_pb2.Run], int]:
    """Follow next_cursor to the end, varying the page size; returns runs and page count."""
    seen: list[types_pb2.Run] = []
    cursor, pages = "", 0
    while True:
        page_request = run_service_pb2.ListRunsRequest()
        page_request.CopyFrom(request)
        page_request.pagination.cursor = cursor
        page_request.pagination.limit = limits[pages % len(limits)]
        answer = await client.list_runs(page_request)
        pages += 1
        assert len(answer.runs) <= page_request.pagination.limit
        seen += answer.runs
        cursor = answer.pagination.next_cursor
        if not cursor:
            return seen, pages
        assert answer.runs, "a page with a next cursor must not be empty"


@pytest.mark.parametrize(
    ("order_by", "descending", "limits"),
    [("", False, [25]), ("duration", False, [7, 100, 33]), ("status", True, [50])],
)
async def test_paging_returns_every_run_exactly_once_in_order(
    stack: Stack,
    runs_client: run_service_connect.RunServiceClient,
    order_by: str,
    descending: bool,
    limits: list[int],
) -> None:
    request = run_service_pb2.ListRunsRequest(order_by=order_by, descending=descending)
    expected = await all_runs_direct(stack, request)
    seen, _ = await page_through(runs_client, request, limits)
    assert sorted(r.id for r in seen) == sorted(r.id for _, r in expected)
    assert len({r.id for r in seen}) == len(seen)
    assert {r.subsystem_id for r in seen} == set(SUBSYSTEMS)
    field, desc = resolve_order(order_by, descending)
    keys = [run_sort_key(r, field) for r in seen]
    assert keys == sorted(keys, reverse=desc)


async def test_list_runs_filters_and_narrows_by_subsystem(
    stack: Stack, runs_client: run_service_connect.RunServiceClient
) -> None:
    request = run_service_pb2.ListRunsRequest(
        filter=run_service_pb2.RunFilter(
            subsystem_ids=["payments", "shipping"],
            statuses=[types_pb2.RUN_STATUS_FAILED],
        )
    )
    expected = await all_runs_direct(stack, request)
    seen, _ = await page_through(runs_client, request, [20])
    assert {r.id for r in seen} == {r.id for _, r in expected}
    assert {r.subsystem_id for r in seen} == {"payments", "shipping"}
    assert all(r.status == types_pb2.RUN_STATUS_FAILED for r in seen)
    first = await runs_client.list_runs(request)
    assert first.pagination.total_count == len(expected)


async def test_foreign_and_changed_cursors_are_invalid_argument(
    runs_client: run_service_connect.RunServiceClient,
) -> None:
    with pytest.raises(ConnectError) as garbage:
        await runs_client.list_runs(
            run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(cursor="40"))
        )
    assert garbage.value.code == Code.INVALID_ARGUMENT
    assert "start again without a cursor" in garbage.value.message

    first = await runs_client.list_runs(run_service_pb2.ListRunsRequest())
    with pytest.raises(ConnectError) as changed:
        await runs_client.list_runs(
            run_service_pb2.ListRunsRequest(
                order_by="duration",
                pagination=types_pb2.PaginationRequest(cursor=first.pagination.next_cursor),
            )
        )
    assert changed.value.code == Code.INVALID_ARGUMENT
    assert "different query" in changed.value.message


async def test_per_run_calls_route_to_the_owner_and_keep_error_codes(
    stack: Stack, runs_client: run_service_connect.RunServiceClient
) -> None:
    # A run the gateway has never listed: found by asking everyone at once.
    run_id = "shipping-run-00007"
    got = await runs_client.get_run(run_service_pb2.GetRunRequest(run_id=run_id))
    assert got.run.id == run_id and got.run.subsystem_id == "shipping"
    steps = await runs_client.get_run_steps(run_service_pb2.GetRunStepsRequest(run_id=run_id))
    assert steps.steps and all(s.run_id == run_id for s in steps.steps)
    timeline = await runs_client.get_run_timeline(
        run_service_pb2.GetRunTimelineRequest(run_id=run_id)
    )
    assert timeline.run_id == run_id
    logs = await runs_client.get_run_logs(run_service_pb2.GetRunLogsRequest(run_id=run_id))
    assert all(entry.run_id == run_id for entry in logs.logs)

    with pytest.raises(ConnectError) as missing:
        await runs_client.get_run(run_service_pb2.GetRunRequest(run_id="nobody-run-1"))
    assert missing.value.code == Code.NOT_FOUND
    assert "nobody-run-1" in missing.value.message

    with pytest.raises(ConnectError) as empty:
        await runs_client.get_run(run_service_pb2.GetRunRequest())
    assert empty.value.code == Code.INVALID_ARGUMENT

    finished = await runs_client.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(
                subsystem_ids=["orders"], statuses=[types_pb2.RUN_STATUS_SUCCEEDED]
            ),
            pagination=types_pb2.PaginationRequest(limit=1),
        )
    )
    with pytest.raises(ConnectError) as refused:
        await runs_client.cancel_run(run_service_pb2.CancelRunRequest(run_id=finished.runs[0].id))
    assert refused.value.code == Code.FAILED_PRECONDITION


async def test_retry_returns_a_new_run_that_routes_to_the_same_subsystem(
    runs_client: run_service_connect.RunServiceClient,
) -> None:
    failed = await runs_client.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(
                subsystem_ids=["payments"], statuses=[types_pb2.RUN_STATUS_FAILED]
            ),
            pagination=types_pb2.PaginationRequest(limit=1),
        )
    )
    original = failed.runs[0]
    retried = await runs_client.retry_run(run_service_pb2.RetryRunRequest(run_id=original.id))
    assert retried.new_run_id and retried.new_run_id != original.id
    new_run = await runs_client.get_run(run_service_pb2.GetRunRequest(run_id=retried.new_run_id))
    assert new_run.run.subsystem_id == "payments"
    assert new_run.run.metadata["retry_of"] == original.id
    await runs_client.pause_run(run_service_pb2.PauseRunRequest(run_id=retried.new_run_id))
    paused = await runs_client.get_run(run_service_pb2.GetRunRequest(run_id=retried.new_run_id))
    assert paused.run.status == types_pb2.RUN_STATUS_PAUSED
    await runs_client.resume_run(run_service_pb2.ResumeRunRequest(run_id=retried.new_run_id))
    await runs_client.cancel_run(run_service_pb2.CancelRunRequest(run_id=retried.new_run_id))
    canceled = await runs_client.get_run(run_service_pb2.GetRunRequest(run_id=retried.new_run_id))
    assert canceled.run.status == types_pb2.RUN_STATUS_CANCELED


async def test_bulk_actions_answer_per_id_in_request_order(
    runs_client: run_service_connect.RunServiceClient,
) -> None:
    active = []
    for sid in ("orders", "shipping"):
        page = await runs_client.list_runs(
            run_service_pb2.ListRunsRequest(
                filter=run_service_pb2.RunFilter(
                    subsystem_ids=[sid], statuses=[types_pb2.RUN_STATUS_RUNNING]
                ),
                pagination=types_pb2.PaginationRequest(limit=2),
            )
        )
        active += [run.id for run in page.runs]
    ids = [active[0], "ghost-run-1", active[2], active[1], active[3]]
    answer = await runs_client.bulk_cancel(
        run_service_pb2.BulkCancelRequest(run_ids=ids, reason="test")
    )
    assert [r.run_id for r in answer.results] == ids
    assert [r.success for r in answer.results] == [True, False, True, True, True]
    assert "ghost-run-1" in answer.results[1].error or answer.results[1].error


async def test_workflows_route_by_index_and_collisions_stay_distinct(stack: Stack) -> None:
    client = workflow_service_connect.WorkflowServiceClient(
        stack.gateway.url, http_client=http2_client()
    )
    listed = await client.list_workflows(
        workflow_service_pb2.ListWorkflowsRequest(pagination=types_pb2.PaginationRequest(limit=5))
    )
    assert len(listed.workflows) == 5 and listed.pagination.next_cursor
    health = [
        w
        for w in (
            await client.list_workflows(
                workflow_service_pb2.ListWorkflowsRequest(
                    pagination=types_pb2.PaginationRequest(limit=100)
                )
            )
        ).workflows
        if w.id == "health-check"
    ]
    assert sorted(w.subsystem_id for w in health) == sorted(SUBSYSTEMS)
    graph = await client.get_graph(
        workflow_service_pb2.GetGraphRequest(workflow_id="orders-intake")
    )
    assert graph.graph.workflow_id == "orders-intake" and graph.graph.nodes
    # Every demo subsystem defines a health-check of its own: its graphs agree, so
    # GetGraph answers; its definitions differ (owners), so GetWorkflow is a conflict.
    shared = await client.get_graph(
        workflow_service_pb2.GetGraphRequest(workflow_id="health-check")
    )
    assert shared.graph.workflow_id == "health-check"
    with pytest.raises(ConnectError) as differing:
        await client.get_workflow(
            workflow_service_pb2.GetWorkflowRequest(workflow_id="health-check")
        )
    assert differing.value.code == Code.FAILED_PRECONDITION
    assert "orders, payments and shipping" in differing.value.message
    with pytest.raises(ConnectError) as missing:
        await client.get_workflow(workflow_service_pb2.GetWorkflowRequest(workflow_id="nope"))
    assert missing.value.code == Code.NOT_FOUND


async def test_trace_spans_all_subsystems(stack: Stack) -> None:
    client = workflow_service_connect.WorkflowServiceClient(
        stack.gateway.url, http_client=http2_client()
    )
    trace = await client.get_trace(workflow_service_pb2.GetTraceRequest(trace_id="trace-0003"))
    assert trace.subsystem_count == 3
    starts = [span.run.started_at.ToNanoseconds() for span in trace.spans]
    assert starts == sorted(starts)
    assert trace.spans[0].offset.ToNanoseconds() == 0
    for span in trace.spans:
        assert span.offset.ToNanoseconds() == span.run.started_at.ToNanoseconds() - starts[0]
    with pytest.raises(ConnectError) as missing:
        await client.get_trace(workflow_service_pb2.GetTraceRequest(trace_id="no-such-trace"))
    assert missing.value.code == Code.NOT_FOUND


def test_subsystems_and_capabilities_over_connect_json(stack: Stack) -> None:
    listed = post(stack.gateway.url, "WorkflowService/ListSubsystems", {})
    assert listed.status_code == 200
    assert listed.headers["access-control-allow-origin"] == "http://localhost:5173"
    summaries = {s["subsystem"]["id"]: s for s in listed.json()["subsystems"]}
    assert set(summaries) == set(SUBSYSTEMS)
    for sid, summary in summaries.items():
        meta = summary["subsystem"]["metadata"]
        assert meta["gateway.state"] == "connected"
        assert meta["gateway.answered"] == "true"
        assert meta["gateway.endpoint"] == stack.endpoints[sid]
        assert summary["workflowCount"] == 4
        assert summary["activeRuns"] > 0
    one = post(stack.gateway.url, "WorkflowService/GetSubsystem", {"subsystemId": "orders"})
    assert one.json()["subsystem"]["subsystem"]["id"] == "orders"
    assert len(one.json()["workflows"]) == 4
    caps = post(stack.gateway.url, "WorkflowService/GetCapabilities", {}).json()["capabilities"]
    assert caps["retryRun"] and caps["cancelRun"] and caps["analytics"]


async def test_counting_analytics_are_sums_of_the_subsystems(stack: Stack) -> None:
    through_gateway = analytics_service_connect.AnalyticsServiceClient(
        stack.gateway.url, http_client=http2_client()
    )
    request = analytics_service_pb2.GetThroughputRequest(
        filter=analytics_service_pb2.AnalyticsFilter(granularity="1h")
    )
    merged = await through_gateway.get_throughput(request)
    expected: dict[int, int] = {}
    failed: dict[int, int] = {}
    for endpoint in stack.endpoints.values():
        one = analytics_service_connect.AnalyticsServiceClient(
            endpoint, http_client=direct(endpoint)
        )
        for bucket in (await one.get_throughput(request)).buckets:
            expected[bucket.timestamp.seconds] = (
                expected.get(bucket.timestamp.seconds, 0) + bucket.total
            )
            failed[bucket.timestamp.seconds] = (
                failed.get(bucket.timestamp.seconds, 0) + bucket.failed
            )
    assert {b.timestamp.seconds: b.total for b in merged.buckets} == expected

    rates = await through_gateway.get_failure_rate(
        analytics_service_pb2.GetFailureRateRequest(filter=request.filter)
    )
    for rate in rates.buckets:
        assert rate.total_runs == expected[rate.timestamp.seconds]
        assert rate.failed_runs == failed[rate.timestamp.seconds]
        if rate.total_runs:
            assert rate.rate == pytest.approx(rate.failed_runs / rate.total_runs)


def test_merged_percentiles_say_how_they_were_computed(stack: Stack) -> None:
    """The demo subsystems send duration sketches: merged answers are sketch-exact
    within 1 %, one subsystem's answer passes through as exact, neither approximate."""
    merged = post(
        stack.gateway.url, "AnalyticsService/GetLatency", {"filter": {"granularity": "1h"}}
    )
    assert merged.status_code == 200
    assert merged.headers["flowwatch-analytics-method"] == "sketch;rel-err=0.01"
    assert "flowwatch-approximate" not in merged.headers
    exact = post(
        stack.gateway.url,
        "AnalyticsService/GetLatency",
        {"filter": {"granularity": "1h", "subsystemId": "orders"}},
    )
    assert exact.status_code == 200
    assert exact.headers["flowwatch-analytics-method"] == "exact"
    assert "flowwatch-approximate" not in exact.headers
    direct_answer = httpx.post(
        f"{stack.endpoints['orders']}/flowwatch.v1.AnalyticsService/GetLatency",
        json={"filter": {"granularity": "1h", "subsystemId": "orders"}},
        headers={"Connect-Protocol-Version": "1"},
    ).json()
    assert exact.json() == direct_answer
    heatmap = post(stack.gateway.url, "AnalyticsService/GetStepHeatmap", {"filter": {}})
    assert heatmap.status_code == 200 and heatmap.json()["cells"]
    steps = post(
        stack.gateway.url, "AnalyticsService/GetStepDuration", {"workflowId": "health-check"}
    )
    assert steps.status_code == 200 and steps.json()["steps"]
    # health-check runs in every demo subsystem: merged from their sketches.
    assert steps.headers["flowwatch-analytics-method"] == "sketch;rel-err=0.01"
    assert "flowwatch-approximate" not in steps.headers


async def test_grpc_clients_are_served_too(stack: Stack) -> None:
    client = run_service_connect.RunServiceClient(
        stack.gateway.url, http_client=http2_client(), protocol=ProtocolType.GRPC
    )
    answer = await client.list_runs(
        run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=3))
    )
    assert len(answer.runs) == 3 and answer.pagination.next_cursor


def test_every_call_the_stock_ui_makes_succeeds(stack: Stack) -> None:
    """Replays what each page of the FlowWatch web UI sends: Connect JSON POSTs with CORS."""
    url = stack.gateway.url
    preflight = httpx.options(
        f"{url}/flowwatch.v1.RunService/ListRuns",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "connect-protocol-version,content-type",
        },
    )
    assert preflight.status_code == 200

    def ok(rpc: str, body: dict[str, object]) -> dict[str, object]:
        response = post(url, rpc, body)
        assert response.status_code == 200, f"{rpc}: {response.status_code} {response.text}"
        assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert "flowwatch-partial-failure" not in response.headers, rpc
        result: dict[str, object] = response.json()
        return result

    # Dashboard.
    ok("WorkflowService/ListWorkflows", {})
    ok("WorkflowService/GetCapabilities", {})
    ok("RunService/ListRuns", {"pagination": {"limit": 15}})
    ok("WorkflowService/ListSubsystems", {})
    # Runs page: first page, then "load more" while there is a cursor.
    page = ok("RunService/ListRuns", {"pagination": {"limit": 25}})
    loaded = list(page["runs"])  # type: ignore[call-overload]
    for _ in range(3):
        cursor = page["pagination"]["nextCursor"]  # type: ignore[index]
        page = ok("RunService/ListRuns", {"pagination": {"limit": 25, "cursor": cursor}})
        loaded += page["runs"]
    assert len({r["id"] for r in loaded}) == 100
    run = loaded[7]
    # Run detail.
    ok("RunService/GetRun", {"runId": run["id"]})
    ok("RunService/GetRunSteps", {"runId": run["id"]})
    ok("RunService/GetRunTimeline", {"runId": run["id"]})
    ok("WorkflowService/GetGraph", {"workflowId": run["workflowId"]})
    # Subsystems page.
    ok("WorkflowService/GetSubsystem", {"subsystemId": "payments"})
    only = ok("RunService/ListRuns", {"filter": {"subsystemIds": ["payments"]}})
    assert {r["subsystemId"] for r in only["runs"]} == {"payments"}  # type: ignore[attr-defined]
    # Analytics page.
    for rpc in ("GetThroughput", "GetFailureRate", "GetStepHeatmap"):
        ok(f"AnalyticsService/{rpc}", {"filter": {"granularity": "1h"}})
    assert post(url, "AnalyticsService/GetLatency", {"filter": {}}).status_code == 200
    assert post(url, "AnalyticsService/GetStepDuration", {}).status_code == 200
    # Search by business id, and the trace view.
    found = ok("RunService/ListRuns", {"filter": {"foreignId": run["foreignId"]}})
    assert run["id"] in {r["id"] for r in found["runs"]}  # type: ignore[attr-defined]
    trace = ok("WorkflowService/GetTrace", {"traceId": "trace-0001"})
    assert trace["subsystemCount"] == 3
    # Actions, single and bulk.
    failed = ok(
        "RunService/ListRuns",
        {"filter": {"statuses": ["RUN_STATUS_FAILED"]}, "pagination": {"limit": 3}},
    )["runs"]
    ids = [r["id"] for r in failed]  # type: ignore[attr-defined]
    retried = ok("RunService/RetryRun", {"runId": ids[0]})
    ok("RunService/PauseRun", {"runId": retried["newRunId"]})
    ok("RunService/ResumeRun", {"runId": retried["newRunId"]})
    ok("RunService/CancelRun", {"runId": retried["newRunId"], "reason": "ui test"})
    bulk = ok("RunService/BulkRetry", {"runIds": ids[1:]})
    assert [r["runId"] for r in bulk["results"]] == ids[1:]  # type: ignore[attr-defined]
    new_ids = [r["newRunId"] for r in bulk["results"]]  # type: ignore[attr-defined]
    cancelled = ok("RunService/BulkCancel", {"runIds": new_ids})
    assert all(r["success"] for r in cancelled["results"])  # type: ignore[attr-defined]
