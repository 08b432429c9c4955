"""Deterministic demo data for one FlowWatch subsystem.

The demo subsystems double as the gateway's test fixture, so the data is built to
expose merge bugs: workflow ids collide across subsystems on purpose, traces span
subsystems, every run and step status occurs, and the same arguments always give
the same data (no wall clock, no global random state).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2

ENGINE_NAME = "flowwatch-demo"

# Shared trace pool: ids depend only on the index, so every demo subsystem, whatever
# its id or seed, has runs in the same traces.
SHARED_TRACE_COUNT = 40
TRACE_SPACING = timedelta(minutes=30)
# Order of the demo subsystems inside a shared trace: the first one's span is the root,
# each later one is the child of its predecessor. Other ids hang under the first.
TRACE_CHAIN: tuple[str, ...] = ("orders", "payments", "shipping")
TRACE_HOP = timedelta(seconds=5)

# Workflows that every demo subsystem has under the same id (collide in the gateway).
SHARED_WORKFLOW_IDS: tuple[str, ...] = ("health-check", "data-retention")

ACTIVE_WINDOW = timedelta(minutes=30)
FINISHED_STATUSES = frozenset(
    {
        types_pb2.RUN_STATUS_SUCCEEDED,
        types_pb2.RUN_STATUS_FAILED,
        types_pb2.RUN_STATUS_CANCELED,
    }
)
ALL_RUN_STATUSES: tuple[types_pb2.RunStatus, ...] = (
    types_pb2.RUN_STATUS_PENDING,
    types_pb2.RUN_STATUS_RUNNING,
    types_pb2.RUN_STATUS_SUCCEEDED,
    types_pb2.RUN_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELED,
    types_pb2.RUN_STATUS_PAUSED,
)

STEP = types_pb2.GRAPH_NODE_TYPE_STEP
CONDITION = types_pb2.GRAPH_NODE_TYPE_CONDITION
FORK = types_pb2.GRAPH_NODE_TYPE_FORK
JOIN = types_pb2.GRAPH_NODE_TYPE_JOIN

REGIONS = ("eu-west", "us-east", "ap-south")
PRIORITIES = ("low", "normal", "high")
TIERS = ("free", "pro", "enterprise")
FAILURES = (
    ("E_TIMEOUT", "upstream did not answer within 30s"),
    ("E_VALIDATION", "payload failed schema validation"),
    ("E_CONFLICT", "record was modified concurrently"),
    ("E_UNAVAILABLE", "dependency returned 503"),
)


@dataclass(frozen=True)
class WorkflowTemplate:
    """A workflow's shape and timing; `shared` ones keep their id in every subsystem."""

    key: str
    shared: bool
    name: str
    description: str
    nodes: tuple[tuple[str, str, types_pb2.GraphNodeType], ...]
    edges: tuple[tuple[str, str, str], ...]
    typical_seconds: Mapping[str, float]
    # Pairs of mutually exclusive steps behind a condition: (usual, rare).
    alternatives: tuple[tuple[str, str], ...] = ()
    weight: float = 1.0


TEMPLATES: tuple[WorkflowTemplate, ...] = (
    WorkflowTemplate(
        key="intake",
        shared=False,
        name="Intake",
        description="Validate, risk-check and fulfil an incoming request",
        nodes=(
            ("validate", "Validate request", STEP),
            ("risk-check", "Risk high?", CONDITION),
            ("auto-approve", "Auto approve", STEP),
            ("manual-review", "Manual review", STEP),
            ("split", "Split", FORK),
            ("reserve", "Reserve resources", STEP),
            ("notify", "Notify customer", STEP),
            ("merge", "Merge", JOIN),
            ("finalize", "Finalize", STEP),
        ),
        edges=(
            ("validate", "risk-check", ""),
            ("risk-check", "auto-approve", "low"),
            ("risk-check", "manual-review", "high"),
            ("auto-approve", "split", ""),
            ("manual-review", "split", ""),
            ("split", "reserve", ""),
            ("split", "notify", ""),
            ("reserve", "merge", ""),
            ("notify", "merge", ""),
            ("merge", "finalize", ""),
        ),
        typical_seconds={
            "validate": 0.8,
            "risk-check": 0.3,
            "auto-approve": 0.5,
            "manual-review": 25.0,
            "reserve": 2.5,
            "notify": 1.2,
            "finalize": 1.0,
        },
        alternatives=(("auto-approve", "manual-review"),),
        weight=0.45,
    ),
    WorkflowTemplate(
        key="reconcile",
        shared=False,
        name="Reconcile",
        description="Compare the ledger with the source of truth and fix drift",
        nodes=(
            ("fetch-ledger", "Fetch ledger", STEP),
            ("compare", "Compare", STEP),
            ("fix-mismatches", "Fix mismatches", STEP),
            ("publish-report", "Publish report", STEP),
        ),
        edges=(
            ("fetch-ledger", "compare", ""),
            ("compare", "fix-mismatches", "drift"),
            ("fix-mismatches", "publish-report", ""),
        ),
        typical_seconds={
            "fetch-ledger": 3.0,
            "compare": 2.0,
            "fix-mismatches": 4.0,
            "publish-report": 0.7,
        },
        weight=0.2,
    ),
    WorkflowTemplate(
        key="health-check",
        shared=True,
        name="Health check",
        description="Probe dependencies and page on degradation",
        nodes=(
            ("fan-out", "Fan out", FORK),
            ("probe-db", "Probe database", STEP),
            ("probe-queue", "Probe queue", STEP),
            ("gather", "Gather", JOIN),
            ("evaluate", "Healthy?", CONDITION),
            ("report", "Report healthy", STEP),
            ("page-oncall", "Page on-call", STEP),
        ),
        edges=(
            ("fan-out", "probe-db", ""),
            ("fan-out", "probe-queue", ""),
            ("probe-db", "gather", ""),
            ("probe-queue", "gather", ""),
            ("gather", "evaluate", ""),
            ("evaluate", "report", "healthy"),
            ("evaluate", "page-oncall", "degraded"),
        ),
        typical_seconds={
            "probe-db": 0.2,
            "probe-queue": 0.15,
            "evaluate": 0.05,
            "report": 0.1,
            "page-oncall": 0.6,
        },
        alternatives=(("report", "page-oncall"),),
        weight=0.25,
    ),
    WorkflowTemplate(
        key="data-retention",
        shared=True,
        name="Data retention",
        description="Archive and purge expired records",
        nodes=(
            ("select-expired", "Select expired", STEP),
            ("archive", "Archive", STEP),
            ("purge", "Purge", STEP),
            ("verify", "Verify", STEP),
        ),
        edges=(
            ("select-expired", "archive", ""),
            ("archive", "purge", ""),
            ("purge", "verify", ""),
        ),
        typical_seconds={
            "select-expired": 1.5,
            "archive": 45.0,
            "purge": 3.0,
            "verify": 0.8,
        },
        weight=0.1,
    ),
)


def workflow_id_for(template: WorkflowTemplate, subsystem_id: str) -> str:
    return template.key if template.shared else f"{subsystem_id}-{template.key}"


def shared_trace_id(index: int) -> str:
    return f"trace-{index:04d}"


def shared_span_id(subsystem_id: str, trace_index: int) -> str:
    """Span id of `subsystem_id`'s run in a shared trace; computable by any subsystem."""
    return f"span-{subsystem_id}-{trace_index:04d}"


def shared_parent_span_id(subsystem_id: str, trace_index: int) -> str:
    """Parent span in a shared trace: previous link of TRACE_CHAIN, or its head for others."""
    if subsystem_id in TRACE_CHAIN:
        position = TRACE_CHAIN.index(subsystem_id)
        if position == 0:
            return ""
        return shared_span_id(TRACE_CHAIN[position - 1], trace_index)
    return shared_span_id(TRACE_CHAIN[0], trace_index)


def shared_trace_start(now: datetime, subsystem_id: str, trace_index: int) -> datetime:
    """When `subsystem_id`'s span in a shared trace starts: children after parents."""
    base = now - TRACE_SPACING * (trace_index + 1)
    hops = TRACE_CHAIN.index(subsystem_id) if subsystem_id in TRACE_CHAIN else len(TRACE_CHAIN)
    return base + TRACE_HOP * hops


def step_order(template: WorkflowTemplate) -> list[str]:
    """Executable nodes (steps and conditions) in a stable topological order."""
    kinds = {node_id: kind for node_id, _, kind in template.nodes}
    position = {node_id: index for index, (node_id, _, _) in enumerate(template.nodes)}
    incoming: dict[str, int] = {node_id: 0 for node_id in kinds}
    for _, target, _ in template.edges:
        incoming[target] += 1
    ready = sorted((n for n, count in incoming.items() if count == 0), key=position.__getitem__)
    ordered: list[str] = []
    while ready:
        node = ready.pop(0)
        ordered.append(node)
        for source, target, _ in template.edges:
            if source == node:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
        ready.sort(key=position.__getitem__)
    return [n for n in ordered if kinds[n] in (STEP, CONDITION)]


@dataclass
class DemoData:
    """Everything one demo subsystem knows; the engine mutates it in place."""

    subsystem: types_pb2.Subsystem
    workflows: list[types_pb2.WorkflowDefinition]
    graphs: dict[str, types_pb2.Graph]
    runs: list[types_pb2.Run]
    steps: dict[str, list[types_pb2.StepExecution]]
    logs: dict[str, list[types_pb2.LogEntry]]
    now: datetime
    # Executable step names per workflow id, in execution order.
    step_names: dict[str, list[str]] = field(default_factory=dict)
    # Mutually exclusive step pairs per workflow id (a condition's branches).
    alternatives: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def to_duration(span: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(span)
    return value


def to_struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(dict(values))
    return result


@dataclass
class _RunPlan:
    started_at: datetime
    template: WorkflowTemplate
    status: types_pb2.RunStatus | None = None  # None: decided by age
    trace_index: int | None = None


def _millis(seconds: float) -> timedelta:
    return timedelta(milliseconds=max(1, round(seconds * 1000)))


class _RunBuilder:
    """Simulates one run against its workflow and records steps, logs and the run."""

    def __init__(
        self, rng: random.Random, subsystem_id: str, now: datetime, data: DemoData
    ) -> None:
        self.rng = rng
        self.subsystem_id = subsystem_id
        self.now = now
        self.data = data

    def build(self, run_id: str, plan: _RunPlan, foreign_id: str) -> None:
        rng = self.rng
        template = plan.template
        workflow_id = workflow_id_for(template, self.subsystem_id)
        status = plan.status if plan.status is not None else self._pick_status(plan.started_at)
        order = step_order(template)
        skipped = {(rare if rng.random() < 0.8 else usual) for usual, rare in template.alternatives}
        if status == types_pb2.RUN_STATUS_PENDING:
            skipped = set()  # no condition has been evaluated yet
        planned = [name for name in order if name not in skipped]
        fail_at = rng.randrange(len(planned)) if status == types_pb2.RUN_STATUS_FAILED else None
        cancel_at = rng.randrange(len(planned)) if status == types_pb2.RUN_STATUS_CANCELED else None
        stop_at = (
            rng.randrange(len(planned))
            if status
            in (
                types_pb2.RUN_STATUS_RUNNING,
                types_pb2.RUN_STATUS_PAUSED,
            )
            else None
        )

        run = types_pb2.Run(
            id=run_id,
            workflow_id=workflow_id,
            foreign_id=foreign_id,
            status=status,
            subsystem_id=self.subsystem_id,
        )
        run.metadata.update(
            {
                "region": rng.choice(REGIONS),
                "priority": rng.choice(PRIORITIES),
                "tier": rng.choice(TIERS),
            }
        )
        self._set_trace(run, plan)

        steps: list[types_pb2.StepExecution] = []
        logs: list[types_pb2.LogEntry] = []
        started = plan.started_at
        clock = started
        for index, name in enumerate(order):
            if name in skipped:
                steps.append(self._step(run, index, name, 1, types_pb2.STEP_STATUS_SKIPPED))
                continue
            position = planned.index(name)
            if status == types_pb2.RUN_STATUS_PENDING or (
                stop_at is not None and position > stop_at
            ):
                steps.append(self._step(run, index, name, 1, types_pb2.STEP_STATUS_PENDING))
                continue
            if stop_at is not None and position == stop_at:
                run.current_step = name
                if status == types_pb2.RUN_STATUS_PAUSED:
                    steps.append(self._step(run, index, name, 1, types_pb2.STEP_STATUS_PENDING))
                    continue
                queue_wait = _millis(rng.expovariate(1 / 0.4))
                execution = self._step(run, index, name, 1, types_pb2.STEP_STATUS_RUNNING)
                execution.started_at.CopyFrom(to_timestamp(clock + queue_wait))
                execution.queue_wait.CopyFrom(to_duration(queue_wait))
                execution.input.CopyFrom(self._input(run, name))
                steps.append(execution)
                logs.extend(self._logs(run, execution, clock + queue_wait, len(logs)))
                clock += queue_wait
                continue
            if cancel_at is not None and position > cancel_at:
                break
            if fail_at is not None and position > fail_at:
                break
            final_outcome = types_pb2.STEP_STATUS_SUCCEEDED
            attempts = 1 + (rng.random() < 0.12) + (rng.random() < 0.04)
            if fail_at == position:
                final_outcome = types_pb2.STEP_STATUS_FAILED
            if cancel_at == position:
                final_outcome, attempts = types_pb2.STEP_STATUS_CANCELED, 1
            for attempt in range(1, attempts + 1):
                last = attempt == attempts
                outcome = final_outcome if last else types_pb2.STEP_STATUS_FAILED
                queue_wait = _millis(rng.expovariate(1 / 0.4))
                typical = template.typical_seconds[name]
                execution_time = _millis(typical * rng.lognormvariate(0, 0.35))
                if outcome == types_pb2.STEP_STATUS_CANCELED:
                    execution_time = _millis(typical * rng.random() * 0.5)
                execution = self._step(run, index, name, attempt, outcome)
                begin = clock + queue_wait
                end = begin + execution_time
                execution.started_at.CopyFrom(to_timestamp(begin))
                execution.finished_at.CopyFrom(to_timestamp(end))
                execution.queue_wait.CopyFrom(to_duration(queue_wait))
                execution.duration.CopyFrom(to_duration(execution_time))
                execution.input.CopyFrom(self._input(run, name))
                if outcome == types_pb2.STEP_STATUS_SUCCEEDED:
                    execution.output.CopyFrom(
                        to_struct({"ok": True, "items": rng.randint(1, 40), "step": name})
                    )
                elif outcome == types_pb2.STEP_STATUS_FAILED:
                    code, message = (
                        rng.choice(FAILURES) if last else ("E_TRANSIENT", "connection reset")
                    )
                    execution.error.CopyFrom(
                        types_pb2.ErrorDetail(
                            message=f"{name}: {message}",
                            code=code,
                            stack_trace=f"at {workflow_id}.{name} (attempt {attempt})\n"
                            f"at demo.engine.execute",
                        )
                    )
                steps.append(execution)
                logs.extend(self._logs(run, execution, begin, len(logs)))
                clock = end

        if status in FINISHED_STATUSES:
            finished = clock + _millis(0.01)
            if finished > self.now:
                # Planned too close to now: move the whole run back so it has finished.
                self._shift(run, steps, logs, finished - self.now + timedelta(seconds=1))
                started -= finished - self.now + timedelta(seconds=1)
                finished = self.now - timedelta(seconds=1)
            run.finished_at.CopyFrom(to_timestamp(finished))
            run.duration.CopyFrom(to_duration(finished - started))
            if status == types_pb2.RUN_STATUS_FAILED:
                failed = next(s for s in reversed(steps) if s.HasField("error"))
                run.error.CopyFrom(failed.error)
            if status == types_pb2.RUN_STATUS_CANCELED:
                run.metadata["cancel_reason"] = "operator request"
        elif clock > self.now:
            shift = clock - self.now + timedelta(seconds=1)
            self._shift(run, steps, logs, shift)
            started -= shift
        run.started_at.CopyFrom(to_timestamp(started))

        self.data.runs.append(run)
        self.data.steps[run_id] = steps
        self.data.logs[run_id] = logs

    def _pick_status(self, started_at: datetime) -> types_pb2.RunStatus:
        roll = self.rng.random()
        table: tuple[tuple[float, types_pb2.RunStatus], ...]
        if self.now - started_at < ACTIVE_WINDOW:
            table = (
                (0.12, types_pb2.RUN_STATUS_PENDING),
                (0.42, types_pb2.RUN_STATUS_RUNNING),
                (0.5, types_pb2.RUN_STATUS_PAUSED),
                (0.88, types_pb2.RUN_STATUS_SUCCEEDED),
                (0.97, types_pb2.RUN_STATUS_FAILED),
            )
        else:
            table = ((0.84, types_pb2.RUN_STATUS_SUCCEEDED), (0.96, types_pb2.RUN_STATUS_FAILED))
        for threshold, status in table:
            if roll < threshold:
                return status
        return types_pb2.RUN_STATUS_CANCELED

    def _set_trace(self, run: types_pb2.Run, plan: _RunPlan) -> None:
        trace = run.trace
        trace.trace_source = "flowwatch-demo"
        if plan.trace_index is not None:
            trace.trace_id = shared_trace_id(plan.trace_index)
            trace.span_id = shared_span_id(self.subsystem_id, plan.trace_index)
            trace.parent_span_id = shared_parent_span_id(self.subsystem_id, plan.trace_index)
            return
        trace.trace_id = f"{run.id}-trace"
        trace.span_id = f"span-{run.id}"
        if self.rng.random() < 0.08:
            trace.additional_trace_ids.append(
                shared_trace_id(self.rng.randrange(SHARED_TRACE_COUNT))
            )

    def _step(
        self,
        run: types_pb2.Run,
        index: int,
        name: str,
        attempt: int,
        status: types_pb2.StepStatus,
    ) -> types_pb2.StepExecution:
        return types_pb2.StepExecution(
            id=f"{run.id}-{index:02d}-{name}-a{attempt}",
            run_id=run.id,
            step_name=name,
            status=status,
            attempt=attempt,
        )

    def _input(self, run: types_pb2.Run, name: str) -> struct_pb2.Struct:
        return to_struct(
            {
                "foreign_id": run.foreign_id,
                "step": name,
                "region": run.metadata["region"],
                "amount": round(self.rng.uniform(5, 900), 2),
            }
        )

    def _logs(
        self,
        run: types_pb2.Run,
        execution: types_pb2.StepExecution,
        begin: datetime,
        lines_so_far: int,
    ) -> list[types_pb2.LogEntry]:
        name = execution.step_name
        lines: list[tuple[types_pb2.LogLevel, str]] = [
            (types_pb2.LOG_LEVEL_DEBUG, f"starting {name} attempt {execution.attempt}"),
            (types_pb2.LOG_LEVEL_INFO, f"{name} processing {run.foreign_id}"),
        ]
        if execution.attempt > 1:
            lines.append((types_pb2.LOG_LEVEL_WARN, f"{name} retrying after a failed attempt"))
        if execution.status == types_pb2.STEP_STATUS_FAILED:
            lines.append((types_pb2.LOG_LEVEL_ERROR, execution.error.message))
        elif execution.status == types_pb2.STEP_STATUS_SUCCEEDED:
            lines.append((types_pb2.LOG_LEVEL_INFO, f"{name} done"))
        elif execution.status == types_pb2.STEP_STATUS_CANCELED:
            lines.append((types_pb2.LOG_LEVEL_WARN, f"{name} canceled"))
        return [
            types_pb2.LogEntry(
                run_id=run.id,
                step_name=name,
                line_number=lines_so_far + offset + 1,
                timestamp=to_timestamp(begin + timedelta(milliseconds=offset * 7)),
                level=level,
                message=message,
                source=f"{self.subsystem_id}-worker",
            )
            for offset, (level, message) in enumerate(lines)
        ]

    @staticmethod
    def _shift(
        run: types_pb2.Run,
        steps: Sequence[types_pb2.StepExecution],
        logs: Sequence[types_pb2.LogEntry],
        by: timedelta,
    ) -> None:
        delta = by.total_seconds()
        for execution in steps:
            for stamp_field in ("started_at", "finished_at"):
                if execution.HasField(stamp_field):
                    stamp = getattr(execution, stamp_field)
                    stamp.FromNanoseconds(stamp.ToNanoseconds() - round(delta * 1e9))
        for entry in logs:
            entry.timestamp.FromNanoseconds(entry.timestamp.ToNanoseconds() - round(delta * 1e9))


def _graph(template: WorkflowTemplate, workflow_id: str) -> types_pb2.Graph:
    graph = types_pb2.Graph(workflow_id=workflow_id)
    for node_id, label, kind in template.nodes:
        node = graph.nodes.add(id=node_id, label=label, type=kind)
        if node_id in template.typical_seconds:
            node.metadata["typical_seconds"] = str(template.typical_seconds[node_id])
    for source, target, label in template.edges:
        graph.edges.add(source_id=source, target_id=target, label=label)
    return graph


def _plans(rng: random.Random, subsystem_id: str, now: datetime, run_count: int) -> list[_RunPlan]:
    weights = [template.weight for template in TEMPLATES]
    trace_count = min(SHARED_TRACE_COUNT, run_count // 2)
    plans = [
        _RunPlan(
            started_at=shared_trace_start(now, subsystem_id, index),
            template=TEMPLATES[0],
            trace_index=index,
        )
        for index in range(trace_count)
    ]
    # One recent run of each status first, so even small data sets cover every status.
    for status in ALL_RUN_STATUSES:
        if len(plans) >= run_count:
            break
        plans.append(
            _RunPlan(
                started_at=now - timedelta(seconds=rng.uniform(120, ACTIVE_WINDOW.total_seconds())),
                template=rng.choices(TEMPLATES, weights)[0],
                status=status,
            )
        )
    while len(plans) < run_count:
        recent = rng.random() < 0.12
        window = ACTIVE_WINDOW if recent else timedelta(hours=24)
        plans.append(
            _RunPlan(
                started_at=now - timedelta(seconds=rng.uniform(1, window.total_seconds())),
                template=rng.choices(TEMPLATES, weights)[0],
            )
        )
    return plans


def build_dataset(subsystem_id: str, *, seed: int, now: datetime, run_count: int = 300) -> DemoData:
    """Build a subsystem's workflows, runs, steps and logs; same arguments, same data.

    `now` must be timezone-aware; runs start within the 24 h before it. Shared traces
    `trace-0000`.. start 30 min apart before `now` (needs run_count >= 2 per trace).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not subsystem_id:
        raise ValueError("subsystem_id must not be empty")
    rng = random.Random(f"{seed}:{subsystem_id}")
    created = now - timedelta(days=30)
    subsystem = types_pb2.Subsystem(
        id=subsystem_id,
        name=f"{subsystem_id.replace('-', ' ').title()} (demo)",
        description=f"In-memory FlowWatch demo subsystem {subsystem_id!r}",
        created_at=to_timestamp(created),
    )
    subsystem.metadata.update({"engine": ENGINE_NAME, "seed": str(seed)})
    data = DemoData(
        subsystem=subsystem, workflows=[], graphs={}, runs=[], steps={}, logs={}, now=now
    )
    for index, template in enumerate(TEMPLATES):
        workflow_id = workflow_id_for(template, subsystem_id)
        definition = types_pb2.WorkflowDefinition(
            id=workflow_id,
            name=template.name,
            engine=ENGINE_NAME,
            version=f"1.{index}.{len(template.nodes)}",
            subsystem_id=subsystem_id,
            created_at=to_timestamp(created + timedelta(days=index)),
        )
        definition.metadata.update(
            {"description": template.description, "owner": f"team-{subsystem_id}"}
        )
        data.workflows.append(definition)
        data.graphs[workflow_id] = _graph(template, workflow_id)
        data.step_names[workflow_id] = step_order(template)
        data.alternatives[workflow_id] = template.alternatives

    builder = _RunBuilder(rng, subsystem_id, now, data)
    plans = sorted(_plans(rng, subsystem_id, now, run_count), key=lambda plan: plan.started_at)
    foreign_pool = max(1, run_count // 3)
    for number, plan in enumerate(plans):
        if plan.trace_index is not None:
            foreign_id = f"order-{20000 + plan.trace_index}"
        else:
            foreign_id = f"order-{10000 + rng.randrange(foreign_pool)}"
        builder.build(f"{subsystem_id}-run-{number:05d}", plan, foreign_id)
    return data
