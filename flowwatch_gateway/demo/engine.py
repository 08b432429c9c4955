"""InMemoryEngine: a complete FlowWatch backend answering from a DemoData set.

Everything runs on the server's single event loop: state changes happen between
awaits, so no locks are needed and no threads are used. Actions mutate the data
in place and publish a change that the watch streams pick up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.adapter import EngineAdapter
from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.api.limits import MAX_PAGE_SIZE, effective_page_size
from flowwatch_gateway.api.ordering import resolve_order, sort_runs
from flowwatch_gateway.demo import analytics as calc
from flowwatch_gateway.demo import search as demo_search
from flowwatch_gateway.demo.dataset import (
    FINISHED_STATUSES,
    DemoData,
    build_dataset,
    to_duration,
    to_timestamp,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2 as analytics,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_pb2 as runs_pb,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    search_service_pb2 as search_pb,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    stream_service_pb2 as stream,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    types_pb2,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    workflow_service_pb2 as wf,
)

Clock = Callable[[], datetime]

DEFAULT_STATS_INTERVAL_SECONDS = 5
WATCH_QUEUE_SIZE = 1024

ACTIVE_STATUSES = frozenset(
    {types_pb2.RUN_STATUS_PENDING, types_pb2.RUN_STATUS_RUNNING, types_pb2.RUN_STATUS_PAUSED}
)
SKIPPABLE_STEP_STATUSES = frozenset(
    {types_pb2.STEP_STATUS_PENDING, types_pb2.STEP_STATUS_RUNNING, types_pb2.STEP_STATUS_FAILED}
)
SEARCH_SCOPES = ("all", "runs", "steps", "payloads", "logs")

T = TypeVar("T")


def wall_clock() -> datetime:
    return datetime.now(UTC)


def status_name(status: types_pb2.RunStatus) -> str:
    return types_pb2.RunStatus.Name(status)


def parse_cursor(cursor: str) -> int:
    """Our cursors are decimal offsets, as in the Go FlowWatch server."""
    if cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdigit()):
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"pagination.cursor {cursor!r} is not a cursor this subsystem issued; "
            "pass back next_cursor from the previous page, or an empty cursor to start over",
        )
    return int(cursor)


def paginate(
    items: Sequence[T], pagination: types_pb2.PaginationRequest
) -> tuple[Sequence[T], types_pb2.PaginationResponse]:
    """One page of `items` plus the PaginationResponse (empty next_cursor on the last page)."""
    offset = parse_cursor(pagination.cursor)
    if pagination.limit < 0:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"pagination.limit must be between 0 and {MAX_PAGE_SIZE}; got {pagination.limit}",
        )
    limit = effective_page_size(pagination.limit)
    end = offset + limit
    page = items[offset:end]
    next_cursor = str(end) if end < len(items) else ""
    return page, types_pb2.PaginationResponse(next_cursor=next_cursor, total_count=len(items))


def run_matches(run: types_pb2.Run, run_filter: runs_pb.RunFilter) -> bool:
    """Every RunFilter field: repeated ones are any-of, metadata_match is all-of."""
    if run_filter.workflow_ids and run.workflow_id not in run_filter.workflow_ids:
        return False
    if run_filter.statuses and run.status not in run_filter.statuses:
        return False
    if run_filter.subsystem_ids and run.subsystem_id not in run_filter.subsystem_ids:
        return False
    if run_filter.foreign_id and run.foreign_id != run_filter.foreign_id:
        return False
    if run_filter.trace_id and not (
        run.trace.trace_id == run_filter.trace_id
        or run_filter.trace_id in run.trace.additional_trace_ids
    ):
        return False
    for key, value in run_filter.metadata_match.items():
        if run.metadata.get(key) != value:
            return False
    time_range = run_filter.time_range
    started = run.started_at.ToNanoseconds()
    if time_range.HasField("from") and started < getattr(time_range, "from").ToNanoseconds():
        return False
    return not (time_range.HasField("to") and started >= time_range.to.ToNanoseconds())


class ChangeKind(Enum):
    CREATED = "created"
    UPDATED = "updated"


@dataclass(frozen=True)
class RunChange:
    """A snapshot of a run after an action, with the step executions it touched."""

    kind: ChangeKind
    run: types_pb2.Run
    steps: tuple[types_pb2.StepExecution, ...]
    at: datetime


@dataclass(eq=False)
class _Watcher:
    queue: asyncio.Queue[RunChange] = field(
        default_factory=lambda: asyncio.Queue(maxsize=WATCH_QUEUE_SIZE)
    )
    overflowed: bool = False


class InMemoryEngine(EngineAdapter):
    """Serves one demo subsystem's FlowWatch API from memory; actions change its state."""

    def __init__(
        self, data: DemoData, *, clock: Clock = wall_clock, emit_sketches: bool = True
    ) -> None:
        """`emit_sketches=False` answers analytics like a subsystem that predates sketches."""
        self.data = data
        self.emit_sketches = emit_sketches
        self.subsystem_id = data.subsystem.id
        self._clock = clock
        self._runs: dict[str, types_pb2.Run] = {run.id: run for run in data.runs}
        self._workflows = {definition.id: definition for definition in data.workflows}
        self._next_run_number = len(data.runs)
        self._watchers: set[_Watcher] = set()

    @classmethod
    def demo(
        cls,
        subsystem_id: str,
        *,
        seed: int = 0,
        now: datetime | None = None,
        run_count: int = 300,
        clock: Clock | None = None,
        emit_sketches: bool = True,
    ) -> InMemoryEngine:
        """A demo engine; with `now` given (and no clock) time stands still at `now`."""
        if clock is None:
            clock = wall_clock if now is None else (lambda: now)
        start = now if now is not None else clock()
        return cls(
            build_dataset(subsystem_id, seed=seed, now=start, run_count=run_count),
            clock=clock,
            emit_sketches=emit_sketches,
        )

    def now(self) -> datetime:
        return self._clock()

    # --- lookups ---------------------------------------------------------------------
    def _run(self, run_id: str) -> types_pb2.Run:
        run = self._runs.get(run_id)
        if run is None:
            raise ConnectError(
                Code.NOT_FOUND, f"run {run_id!r} not found in subsystem {self.subsystem_id!r}"
            )
        return run

    def _workflow(self, workflow_id: str) -> types_pb2.WorkflowDefinition:
        definition = self._workflows.get(workflow_id)
        if definition is None:
            raise ConnectError(
                Code.NOT_FOUND,
                f"workflow {workflow_id!r} not found in subsystem {self.subsystem_id!r}; "
                f"it has {', '.join(sorted(self._workflows))}",
            )
        return definition

    def _sorted_workflows(self) -> list[types_pb2.WorkflowDefinition]:
        return sorted(self._workflows.values(), key=lambda definition: definition.id)

    def all_runs(self) -> list[types_pb2.Run]:
        return list(self._runs.values())

    def _executions(self, runs: Iterable[types_pb2.Run]) -> Iterator[types_pb2.StepExecution]:
        for run in runs:
            yield from self.data.steps.get(run.id, [])

    # --- WorkflowService -------------------------------------------------------------
    async def list_workflows(
        self, request: wf.ListWorkflowsRequest, ctx: CallContext
    ) -> wf.ListWorkflowsResponse:
        page, pagination = paginate(self._sorted_workflows(), request.pagination)
        return wf.ListWorkflowsResponse(workflows=page, pagination=pagination)

    async def get_workflow(
        self, request: wf.GetWorkflowRequest, ctx: CallContext
    ) -> wf.GetWorkflowResponse:
        return wf.GetWorkflowResponse(workflow=self._workflow(request.workflow_id))

    async def get_graph(self, request: wf.GetGraphRequest, ctx: CallContext) -> wf.GetGraphResponse:
        self._workflow(request.workflow_id)
        return wf.GetGraphResponse(graph=self.data.graphs[request.workflow_id])

    def summary(self) -> wf.SubsystemSummary:
        health = calc.recent_health(self._runs.values(), self.now())
        return wf.SubsystemSummary(
            subsystem=self.data.subsystem,
            workflow_count=len(self._workflows),
            active_runs=health.active_runs,
            failed_last_hour=health.failed_last_hour,
            error_rate_last_hour=health.error_rate_last_hour,
        )

    async def list_subsystems(
        self, request: wf.ListSubsystemsRequest, ctx: CallContext
    ) -> wf.ListSubsystemsResponse:
        return wf.ListSubsystemsResponse(subsystems=[self.summary()])

    async def get_subsystem(
        self, request: wf.GetSubsystemRequest, ctx: CallContext
    ) -> wf.GetSubsystemResponse:
        if request.subsystem_id != self.subsystem_id:
            raise ConnectError(
                Code.NOT_FOUND,
                f"subsystem {request.subsystem_id!r} not found; this is {self.subsystem_id!r}",
            )
        return wf.GetSubsystemResponse(subsystem=self.summary(), workflows=self._sorted_workflows())

    def capabilities(self) -> types_pb2.Capabilities:
        return types_pb2.Capabilities(
            retry_run=True,
            retry_from_step=True,
            cancel_run=True,
            pause_run=True,
            resume_run=True,
            skip_step=True,
            streaming=True,
            analytics=True,
            search=types_pb2.SearchCapabilities(
                enabled=True,
                engine=demo_search.ENGINE,
                scopes=SEARCH_SCOPES,
                query_language=True,
                max_results=MAX_PAGE_SIZE,
                payload_indexed=True,
                log_indexed=True,
                log_retention_days=1,
                payload_retention_days=1,
            ),
        )

    async def get_capabilities(
        self, request: wf.GetCapabilitiesRequest, ctx: CallContext
    ) -> wf.GetCapabilitiesResponse:
        return wf.GetCapabilitiesResponse(capabilities=self.capabilities())

    def _elapsed(self, run: types_pb2.Run) -> timedelta:
        if run.HasField("duration"):
            return run.duration.ToTimedelta()
        if run.status == types_pb2.RUN_STATUS_PENDING:
            return timedelta(0)
        return max(timedelta(0), self.now() - run.started_at.ToDatetime(tzinfo=UTC))

    async def get_trace(self, request: wf.GetTraceRequest, ctx: CallContext) -> wf.GetTraceResponse:
        members = sort_runs(
            [
                run
                for run in self._runs.values()
                if run.trace.trace_id == request.trace_id
                or request.trace_id in run.trace.additional_trace_ids
            ],
            "started_at",
            False,
        )
        if not members:
            raise ConnectError(
                Code.NOT_FOUND,
                f"trace {request.trace_id!r} has no runs in subsystem {self.subsystem_id!r}",
            )
        first = members[0].started_at.ToDatetime(tzinfo=UTC)
        response = wf.GetTraceResponse(trace_id=request.trace_id, subsystem_count=1)
        last = first
        for run in members:
            started = run.started_at.ToDatetime(tzinfo=UTC)
            elapsed = self._elapsed(run)
            last = max(last, started + elapsed)
            response.spans.add(
                span_id=run.trace.span_id,
                parent_span_id=run.trace.parent_span_id,
                run=run,
                subsystem_id=run.subsystem_id,
                offset=to_duration(started - first),
                duration=to_duration(elapsed),
                steps=self.data.steps.get(run.id, []),
            )
        response.total_duration.CopyFrom(to_duration(last - first))
        return response

    # --- RunService: reads -----------------------------------------------------------
    async def list_runs(
        self, request: runs_pb.ListRunsRequest, ctx: CallContext
    ) -> runs_pb.ListRunsResponse:
        field_name, descending = resolve_order(request.order_by, request.descending)
        matching = [run for run in self._runs.values() if run_matches(run, request.filter)]
        page, pagination = paginate(sort_runs(matching, field_name, descending), request.pagination)
        return runs_pb.ListRunsResponse(runs=page, pagination=pagination)

    async def get_run(
        self, request: runs_pb.GetRunRequest, ctx: CallContext
    ) -> runs_pb.GetRunResponse:
        return runs_pb.GetRunResponse(run=self._run(request.run_id))

    async def get_run_steps(
        self, request: runs_pb.GetRunStepsRequest, ctx: CallContext
    ) -> runs_pb.GetRunStepsResponse:
        self._run(request.run_id)
        return runs_pb.GetRunStepsResponse(steps=self.data.steps.get(request.run_id, []))

    async def get_run_timeline(
        self, request: runs_pb.GetRunTimelineRequest, ctx: CallContext
    ) -> runs_pb.GetRunTimelineResponse:
        run = self._run(request.run_id)
        run_start = run.started_at.ToNanoseconds()
        response = runs_pb.GetRunTimelineResponse(
            run_id=run.id, total_duration=to_duration(self._elapsed(run))
        )
        for execution in self.data.steps.get(run.id, []):
            if not execution.HasField("started_at"):
                continue  # never started: nothing to place on a timeline
            entry = response.entries.add(
                step_name=execution.step_name,
                status=execution.status,
                attempt=execution.attempt,
                offset=calc.duration_of(execution.started_at.ToNanoseconds() - run_start),
                duration=execution.duration,
                queue_wait=execution.queue_wait,
            )
            if execution.HasField("error"):
                entry.error.CopyFrom(execution.error)
        return response

    async def get_run_logs(
        self, request: runs_pb.GetRunLogsRequest, ctx: CallContext
    ) -> runs_pb.GetRunLogsResponse:
        self._run(request.run_id)
        entries = [
            entry
            for entry in self.data.logs.get(request.run_id, [])
            if (not request.step_name or entry.step_name == request.step_name)
            and (not request.levels or entry.level in request.levels)
        ]
        page, pagination = paginate(entries, request.pagination)
        return runs_pb.GetRunLogsResponse(logs=page, pagination=pagination)

    # --- RunService: actions ---------------------------------------------------------
    def _publish(
        self, kind: ChangeKind, run: types_pb2.Run, steps: Iterable[types_pb2.StepExecution]
    ) -> None:
        snapshot = types_pb2.Run()
        snapshot.CopyFrom(run)
        copies = []
        for execution in steps:
            copy = types_pb2.StepExecution()
            copy.CopyFrom(execution)
            copies.append(copy)
        change = RunChange(kind, snapshot, tuple(copies), self.now())
        for watcher in self._watchers:
            try:
                watcher.queue.put_nowait(change)
            except asyncio.QueueFull:
                watcher.overflowed = True

    def _finish(self, run: types_pb2.Run, status: types_pb2.RunStatus) -> None:
        now = self.now()
        run.status = status
        run.finished_at.CopyFrom(to_timestamp(now))
        run.duration.CopyFrom(to_duration(now - run.started_at.ToDatetime(tzinfo=UTC)))

    def _start_step(self, execution: types_pb2.StepExecution) -> None:
        execution.status = types_pb2.STEP_STATUS_RUNNING
        execution.started_at.CopyFrom(to_timestamp(self.now()))
        execution.queue_wait.CopyFrom(to_duration(timedelta(0)))

    def _new_run_id(self) -> str:
        while True:
            run_id = f"{self.subsystem_id}-run-{self._next_run_number:05d}"
            self._next_run_number += 1
            if run_id not in self._runs:
                return run_id

    def _steps_of_workflow(self, workflow_id: str) -> list[str]:
        return self.data.step_names.get(workflow_id, [])

    def _last_execution(self, run_id: str, step_name: str) -> types_pb2.StepExecution | None:
        found = None
        for execution in self.data.steps.get(run_id, []):
            if execution.step_name == step_name:
                found = execution
        return found

    def _retry(self, original: types_pb2.Run, from_step: str | None) -> str:
        """Create a RUNNING copy of `original`, keeping results of steps before `from_step`."""
        if original.status not in FINISHED_STATUSES:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"run {original.id!r} is {status_name(original.status)}; only finished runs "
                "can be retried (cancel it first)",
            )
        order = self._steps_of_workflow(original.workflow_id)
        start_index = 0
        if from_step is not None:
            if from_step not in order:
                raise ConnectError(
                    Code.INVALID_ARGUMENT,
                    f"step {from_step!r} is not a step of workflow {original.workflow_id!r}; "
                    f"its steps are {', '.join(order)}",
                )
            start_index = order.index(from_step)
        kept: list[types_pb2.StepExecution] = []
        for name in order[:start_index]:
            previous = self._last_execution(original.id, name)
            if previous is None or previous.status not in (
                types_pb2.STEP_STATUS_SUCCEEDED,
                types_pb2.STEP_STATUS_SKIPPED,
            ):
                raise ConnectError(
                    Code.FAILED_PRECONDITION,
                    f"step {name!r} of run {original.id!r} did not succeed, so the run cannot "
                    f"be retried from {from_step!r}; retry from {name!r} instead",
                )
            kept.append(previous)

        new_id = self._new_run_id()
        run = types_pb2.Run(
            id=new_id,
            workflow_id=original.workflow_id,
            foreign_id=original.foreign_id,
            status=types_pb2.RUN_STATUS_RUNNING,
            subsystem_id=self.subsystem_id,
            started_at=to_timestamp(self.now()),
        )
        run.trace.CopyFrom(original.trace)
        run.trace.span_id = f"{original.trace.span_id}-retry-{new_id}"
        run.metadata.update(original.metadata)
        run.metadata.pop("cancel_reason", None)
        run.metadata["retry_of"] = original.id
        if from_step is not None:
            run.metadata["retry_from_step"] = from_step

        steps: list[types_pb2.StepExecution] = []
        for index, name in enumerate(order):
            execution = types_pb2.StepExecution(
                id=f"{new_id}-{index:02d}-{name}-a1", run_id=new_id, step_name=name, attempt=1
            )
            if index < start_index:
                execution.CopyFrom(kept[index])
                execution.id = f"{new_id}-{index:02d}-{name}-a{execution.attempt}"
                execution.run_id = new_id
            elif index == start_index:
                self._start_step(execution)
                run.current_step = name
            else:
                execution.status = types_pb2.STEP_STATUS_PENDING
            steps.append(execution)
        if start_index >= len(order):
            self._finish(run, types_pb2.RUN_STATUS_SUCCEEDED)
        self._runs[new_id] = run
        self.data.runs.append(run)
        self.data.steps[new_id] = steps
        self.data.logs[new_id] = []
        self._publish(ChangeKind.CREATED, run, steps)
        return new_id

    async def retry_run(
        self, request: runs_pb.RetryRunRequest, ctx: CallContext
    ) -> runs_pb.RetryRunResponse:
        return runs_pb.RetryRunResponse(new_run_id=self._retry(self._run(request.run_id), None))

    async def retry_from_step(
        self, request: runs_pb.RetryFromStepRequest, ctx: CallContext
    ) -> runs_pb.RetryFromStepResponse:
        new_id = self._retry(self._run(request.run_id), request.step_name)
        return runs_pb.RetryFromStepResponse(new_run_id=new_id)

    def cancel(self, run_id: str, reason: str) -> None:
        run = self._run(run_id)
        if run.status not in ACTIVE_STATUSES:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"run {run_id!r} already finished ({status_name(run.status)}); only pending, "
                "running or paused runs can be canceled",
            )
        now = to_timestamp(self.now())
        touched = []
        for execution in self.data.steps.get(run_id, []):
            if execution.status == types_pb2.STEP_STATUS_RUNNING:
                execution.finished_at.CopyFrom(now)
                execution.duration.CopyFrom(
                    calc.duration_of(now.ToNanoseconds() - execution.started_at.ToNanoseconds())
                )
            if execution.status in (types_pb2.STEP_STATUS_RUNNING, types_pb2.STEP_STATUS_PENDING):
                execution.status = types_pb2.STEP_STATUS_CANCELED
                touched.append(execution)
        self._finish(run, types_pb2.RUN_STATUS_CANCELED)
        run.metadata["cancel_reason"] = reason or "canceled via FlowWatch"
        self._publish(ChangeKind.UPDATED, run, touched)

    async def cancel_run(
        self, request: runs_pb.CancelRunRequest, ctx: CallContext
    ) -> runs_pb.CancelRunResponse:
        self.cancel(request.run_id, request.reason)
        return runs_pb.CancelRunResponse()

    async def pause_run(
        self, request: runs_pb.PauseRunRequest, ctx: CallContext
    ) -> runs_pb.PauseRunResponse:
        run = self._run(request.run_id)
        if run.status != types_pb2.RUN_STATUS_RUNNING:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"run {run.id!r} is {status_name(run.status)}; only running runs can be paused",
            )
        touched = []
        for execution in self.data.steps.get(run.id, []):
            if execution.status == types_pb2.STEP_STATUS_RUNNING:
                # Pausing interrupts the current step; it starts again on resume.
                execution.status = types_pb2.STEP_STATUS_PENDING
                execution.ClearField("started_at")
                execution.ClearField("queue_wait")
                touched.append(execution)
        run.status = types_pb2.RUN_STATUS_PAUSED
        self._publish(ChangeKind.UPDATED, run, touched)
        return runs_pb.PauseRunResponse()

    async def resume_run(
        self, request: runs_pb.ResumeRunRequest, ctx: CallContext
    ) -> runs_pb.ResumeRunResponse:
        run = self._run(request.run_id)
        if run.status != types_pb2.RUN_STATUS_PAUSED:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"run {run.id!r} is {status_name(run.status)}; only paused runs can be resumed",
            )
        run.status = types_pb2.RUN_STATUS_RUNNING
        touched = self._advance(run)
        self._publish(ChangeKind.UPDATED, run, touched)
        return runs_pb.ResumeRunResponse()

    def _advance(self, run: types_pb2.Run) -> list[types_pb2.StepExecution]:
        """Start the next pending step of a running run, or finish it when none is left."""
        for execution in self.data.steps.get(run.id, []):
            if execution.status == types_pb2.STEP_STATUS_RUNNING:
                run.current_step = execution.step_name
                return []
            if execution.status == types_pb2.STEP_STATUS_PENDING:
                run.current_step = execution.step_name
                if run.status == types_pb2.RUN_STATUS_RUNNING:
                    self._start_step(execution)
                    return [execution]
                return []
        run.current_step = ""
        self._finish(run, types_pb2.RUN_STATUS_SUCCEEDED)
        return []

    async def skip_step(
        self, request: runs_pb.SkipStepRequest, ctx: CallContext
    ) -> runs_pb.SkipStepResponse:
        run = self._run(request.run_id)
        order = self._steps_of_workflow(run.workflow_id)
        if request.step_name not in order:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"step {request.step_name!r} is not a step of workflow {run.workflow_id!r}; "
                f"its steps are {', '.join(order)}",
            )
        execution = self._last_execution(run.id, request.step_name)
        if execution is None or execution.status not in SKIPPABLE_STEP_STATUSES:
            state = (
                "never ran"
                if execution is None
                else f"is {types_pb2.StepStatus.Name(execution.status)}"
            )
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"step {request.step_name!r} of run {run.id!r} {state}; only pending, running "
                "or failed steps can be skipped",
            )
        if execution.status == types_pb2.STEP_STATUS_RUNNING:
            now = to_timestamp(self.now())
            execution.finished_at.CopyFrom(now)
            execution.duration.CopyFrom(
                calc.duration_of(now.ToNanoseconds() - execution.started_at.ToNanoseconds())
            )
        execution.status = types_pb2.STEP_STATUS_SKIPPED
        touched = [execution]
        if run.status in ACTIVE_STATUSES and run.current_step in ("", request.step_name):
            touched.extend(self._advance(run))
        self._publish(ChangeKind.UPDATED, run, touched)
        return runs_pb.SkipStepResponse()

    async def bulk_retry(
        self, request: runs_pb.BulkRetryRequest, ctx: CallContext
    ) -> runs_pb.BulkRetryResponse:
        response = runs_pb.BulkRetryResponse()
        for run_id in request.run_ids:
            try:
                new_id = self._retry(self._run(run_id), None)
            except ConnectError as error:
                response.results.add(run_id=run_id, success=False, error=error.message)
            else:
                response.results.add(run_id=run_id, success=True, new_run_id=new_id)
        return response

    async def bulk_cancel(
        self, request: runs_pb.BulkCancelRequest, ctx: CallContext
    ) -> runs_pb.BulkCancelResponse:
        response = runs_pb.BulkCancelResponse()
        for run_id in request.run_ids:
            try:
                self.cancel(run_id, request.reason)
            except ConnectError as error:
                response.results.add(run_id=run_id, success=False, error=error.message)
            else:
                response.results.add(run_id=run_id, success=True)
        return response

    # --- AnalyticsService ------------------------------------------------------------
    def _analytics_runs(
        self, analytics_filter: analytics.AnalyticsFilter
    ) -> tuple[list[types_pb2.Run], calc.Window]:
        window = calc.resolve_window(
            analytics_filter.time_range, analytics_filter.granularity, self.now()
        )
        selected = calc.select_runs(
            self._runs.values(),
            workflow_id=analytics_filter.workflow_id,
            subsystem_id=analytics_filter.subsystem_id,
            window=window,
        )
        return selected, window

    async def get_throughput(
        self, request: analytics.GetThroughputRequest, ctx: CallContext
    ) -> analytics.GetThroughputResponse:
        selected, window = self._analytics_runs(request.filter)
        return analytics.GetThroughputResponse(buckets=calc.throughput(selected, window))

    async def get_latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext
    ) -> analytics.GetLatencyResponse:
        selected, window = self._analytics_runs(request.filter)
        response = analytics.GetLatencyResponse(buckets=calc.latency(selected, window))
        return response if self.emit_sketches else calc.without_sketches(response)

    async def get_failure_rate(
        self, request: analytics.GetFailureRateRequest, ctx: CallContext
    ) -> analytics.GetFailureRateResponse:
        selected, window = self._analytics_runs(request.filter)
        return analytics.GetFailureRateResponse(buckets=calc.failure_rate(selected, window))

    async def get_step_heatmap(
        self, request: analytics.GetStepHeatmapRequest, ctx: CallContext
    ) -> analytics.GetStepHeatmapResponse:
        window = calc.resolve_window(
            request.filter.time_range, request.filter.granularity, self.now()
        )
        owners = [
            run
            for run in self._runs.values()
            if (not request.filter.workflow_id or run.workflow_id == request.filter.workflow_id)
            and (not request.filter.subsystem_id or run.subsystem_id == request.filter.subsystem_id)
        ]
        heatmap = calc.step_heatmap(self._executions(owners), window)
        return heatmap if self.emit_sketches else calc.without_sketches(heatmap)

    async def get_step_duration(
        self, request: analytics.GetStepDurationRequest, ctx: CallContext
    ) -> analytics.GetStepDurationResponse:
        window = calc.resolve_window(request.time_range, "1h", self.now())
        owners = [
            run
            for run in self._runs.values()
            if not request.workflow_id or run.workflow_id == request.workflow_id
        ]
        durations = calc.step_duration(self._executions(owners), window)
        return durations if self.emit_sketches else calc.without_sketches(durations)

    # --- StreamService ---------------------------------------------------------------
    @contextlib.contextmanager
    def _watch(self) -> Iterator[_Watcher]:
        watcher = _Watcher()
        self._watchers.add(watcher)
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    @staticmethod
    async def _next_change(watcher: _Watcher) -> RunChange:
        if watcher.overflowed and watcher.queue.empty():
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                "this watch fell too far behind and missed events; reconnect to resume",
            )
        return await watcher.queue.get()

    async def watch_runs(
        self, request: stream.WatchRunsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunEvent]:
        run_filter = runs_pb.RunFilter(
            workflow_ids=request.workflow_ids,
            statuses=request.statuses,
            subsystem_ids=request.subsystem_ids,
        )
        with self._watch() as watcher:
            if request.include_initial_snapshot:
                now = to_timestamp(self.now())
                initial = [run for run in self._runs.values() if run_matches(run, run_filter)]
                for run in sort_runs(initial, "started_at", False):
                    yield stream.RunEvent(
                        event_type=stream.RUN_EVENT_TYPE_CREATED, run=run, event_time=now
                    )
            while True:
                change = await self._next_change(watcher)
                if not run_matches(change.run, run_filter):
                    continue
                if change.kind == ChangeKind.CREATED:
                    event_type = stream.RUN_EVENT_TYPE_CREATED
                elif change.run.status in FINISHED_STATUSES:
                    event_type = stream.RUN_EVENT_TYPE_COMPLETED
                else:
                    event_type = stream.RUN_EVENT_TYPE_UPDATED
                yield stream.RunEvent(
                    event_type=event_type, run=change.run, event_time=to_timestamp(change.at)
                )

    async def watch_run(
        self, request: stream.WatchRunRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunDetailEvent]:
        run = self._run(request.run_id)
        with self._watch() as watcher:
            # The current state first, so the client gets headers and a baseline at once.
            yield stream.RunDetailEvent(
                event_type=stream.RUN_DETAIL_EVENT_TYPE_RUN_UPDATED,
                event_time=to_timestamp(self.now()),
                run=run,
            )
            while True:
                change = await self._next_change(watcher)
                if change.run.id != request.run_id:
                    continue
                at = to_timestamp(change.at)
                yield stream.RunDetailEvent(
                    event_type=stream.RUN_DETAIL_EVENT_TYPE_RUN_UPDATED,
                    event_time=at,
                    run=change.run,
                )
                for execution in change.steps:
                    yield stream.RunDetailEvent(
                        event_type=stream.RUN_DETAIL_EVENT_TYPE_STEP_UPDATED,
                        event_time=at,
                        run=change.run,
                        step=execution,
                    )

    async def watch_stats(
        self, request: stream.WatchStatsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.StatsSnapshot]:
        if request.interval_seconds < 0:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"interval_seconds must be at least 1 (0 means the default "
                f"{DEFAULT_STATS_INTERVAL_SECONDS}); got {request.interval_seconds}",
            )
        interval = request.interval_seconds or DEFAULT_STATS_INTERVAL_SECONDS
        while True:
            yield calc.stats_snapshot(self._runs.values(), self.now())
            await asyncio.sleep(interval)

    # --- SearchService ---------------------------------------------------------------
    def _corpus(self) -> demo_search.Corpus:
        return demo_search.Corpus(
            runs=list(self._runs.values()), steps=self.data.steps, logs=self.data.logs
        )

    async def search(
        self, request: search_pb.SearchRequest, ctx: CallContext
    ) -> search_pb.SearchResponse:
        hits, facets, took_ms = demo_search.search(
            self._corpus(), request.query, request.scope, request.time_range
        )
        page, pagination = paginate(hits, request.pagination)
        return search_pb.SearchResponse(
            results=page, facets=facets, pagination=pagination, query_ms=took_ms
        )

    async def suggest(
        self, request: search_pb.SuggestRequest, ctx: CallContext
    ) -> search_pb.SuggestResponse:
        return search_pb.SuggestResponse(
            suggestions=demo_search.suggest(
                self._corpus(), request.field, request.prefix, request.limit
            )
        )

    async def explain(
        self, request: search_pb.ExplainRequest, ctx: CallContext
    ) -> search_pb.ExplainResponse:
        return demo_search.explain(request.raw_query)

    async def get_index_stats(
        self, request: search_pb.GetIndexStatsRequest, ctx: CallContext
    ) -> search_pb.GetIndexStatsResponse:
        return demo_search.index_stats(self._corpus(), self.now())

    async def reindex(
        self, request: search_pb.ReindexRequest, ctx: CallContext
    ) -> search_pb.ReindexResponse:
        run_filter = runs_pb.RunFilter(time_range=request.range)
        if request.workflow_id:
            self._workflow(request.workflow_id)
            run_filter.workflow_ids.append(request.workflow_id)
        queued = sum(run_matches(run, run_filter) for run in self._runs.values())
        return search_pb.ReindexResponse(runs_queued=queued)
