"""The demo data set: deterministic, complete, and built to expose merge bugs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from flowwatch_gateway.demo.dataset import (
    ALL_RUN_STATUSES,
    SHARED_WORKFLOW_IDS,
    build_dataset,
    shared_span_id,
)
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_same_arguments_give_identical_data() -> None:
    first = build_dataset("orders", seed=7, now=NOW)
    second = build_dataset("orders", seed=7, now=NOW)
    assert [run.SerializeToString(deterministic=True) for run in first.runs] == [
        run.SerializeToString(deterministic=True) for run in second.runs
    ]
    assert first.steps == second.steps
    assert first.logs == second.logs
    assert first.workflows == second.workflows


def test_different_seed_gives_different_runs() -> None:
    first = build_dataset("orders", seed=1, now=NOW)
    second = build_dataset("orders", seed=2, now=NOW)
    assert [run.foreign_id for run in first.runs] != [run.foreign_id for run in second.runs]


@pytest.mark.parametrize("run_count", [12, 300])
def test_every_run_status_occurs(run_count: int) -> None:
    data = build_dataset("payments", seed=3, now=NOW, run_count=run_count)
    assert len(data.runs) == run_count
    assert set(Counter(run.status for run in data.runs)) == set(ALL_RUN_STATUSES)


def test_runs_are_well_formed() -> None:
    data = build_dataset("orders", seed=5, now=NOW)
    ids = [run.id for run in data.runs]
    assert len(set(ids)) == len(ids)
    workflow_ids = {definition.id for definition in data.workflows}
    for run in data.runs:
        assert run.id.startswith("orders-")
        assert run.subsystem_id == "orders"
        assert run.workflow_id in workflow_ids
        started = run.started_at.ToDatetime(tzinfo=UTC)
        assert NOW - timedelta(hours=24, minutes=5) <= started <= NOW
        finished = run.status in (
            types_pb2.RUN_STATUS_SUCCEEDED,
            types_pb2.RUN_STATUS_FAILED,
            types_pb2.RUN_STATUS_CANCELED,
        )
        assert run.HasField("duration") == finished
        assert run.HasField("finished_at") == finished
        if finished:
            assert run.finished_at.ToDatetime(tzinfo=UTC) <= NOW
            assert run.duration.ToTimedelta() == (run.finished_at.ToDatetime(tzinfo=UTC) - started)
        assert run.HasField("error") == (run.status == types_pb2.RUN_STATUS_FAILED)
        if run.status in (types_pb2.RUN_STATUS_RUNNING, types_pb2.RUN_STATUS_PAUSED):
            assert run.current_step
        assert {"region", "priority", "tier"} <= set(run.metadata)


def test_steps_follow_the_graph_and_carry_details() -> None:
    data = build_dataset("orders", seed=5, now=NOW)
    attempts = Counter[int]()
    for run in data.runs:
        graph_nodes = {node.id for node in data.graphs[run.workflow_id].nodes}
        steps = data.steps[run.id]
        assert steps, run.id
        for execution in steps:
            assert execution.step_name in graph_nodes
            assert execution.run_id == run.id
            attempts[execution.attempt] += 1
            if execution.status == types_pb2.STEP_STATUS_FAILED:
                assert execution.error.message
            if execution.status == types_pb2.STEP_STATUS_SUCCEEDED:
                assert execution.HasField("output")
                assert execution.HasField("queue_wait")
                assert execution.duration.ToNanoseconds() > 0
        if run.status == types_pb2.RUN_STATUS_RUNNING:
            running = [s for s in steps if s.status == types_pb2.STEP_STATUS_RUNNING]
            assert [s.step_name for s in running] == [run.current_step]
        logs = data.logs[run.id]
        assert [entry.line_number for entry in logs] == list(range(1, len(logs) + 1))
    assert attempts[2] > 0, "some steps must have been retried"
    levels = {entry.level for logs in data.logs.values() for entry in logs}
    assert levels == {
        types_pb2.LOG_LEVEL_DEBUG,
        types_pb2.LOG_LEVEL_INFO,
        types_pb2.LOG_LEVEL_WARN,
        types_pb2.LOG_LEVEL_ERROR,
    }


def test_graphs_use_every_structural_node_type() -> None:
    data = build_dataset("shipping", seed=0, now=NOW)
    kinds = {node.type for graph in data.graphs.values() for node in graph.nodes}
    assert {
        types_pb2.GRAPH_NODE_TYPE_STEP,
        types_pb2.GRAPH_NODE_TYPE_CONDITION,
        types_pb2.GRAPH_NODE_TYPE_FORK,
        types_pb2.GRAPH_NODE_TYPE_JOIN,
    } <= kinds
    assert any(edge.label for graph in data.graphs.values() for edge in graph.edges)
    assert 3 <= len(data.workflows) <= 4
    for definition in data.workflows:
        assert definition.engine == "flowwatch-demo"
        assert definition.version
        assert definition.subsystem_id == "shipping"


def test_some_workflow_ids_collide_across_subsystems_and_others_do_not() -> None:
    orders = {d.id for d in build_dataset("orders", seed=1, now=NOW).workflows}
    billing = {d.id for d in build_dataset("billing-eu", seed=9, now=NOW).workflows}
    assert orders & billing == set(SHARED_WORKFLOW_IDS)
    assert {w for w in orders - billing if w.startswith("orders-")} == orders - billing


def test_trace_ids_are_shared_across_subsystems_with_distinct_spans() -> None:
    orders = build_dataset("orders", seed=1, now=NOW)
    payments = build_dataset("payments", seed=99, now=NOW)

    def spans(data_runs: list[types_pb2.Run], trace_id: str) -> list[types_pb2.Run]:
        return [run for run in data_runs if run.trace.trace_id == trace_id]

    for index in (0, 17, 39):
        trace_id = f"trace-{index:04d}"
        (root,) = spans(orders.runs, trace_id)
        (child,) = spans(payments.runs, trace_id)
        assert root.trace.parent_span_id == ""
        assert child.trace.parent_span_id == root.trace.span_id == shared_span_id("orders", index)
        assert child.trace.span_id != root.trace.span_id
        assert child.started_at.ToNanoseconds() > root.started_at.ToNanoseconds()
        assert root.foreign_id == child.foreign_id
    linked = [run for run in orders.runs if run.trace.additional_trace_ids]
    assert linked
    all_spans = [run.trace.span_id for run in orders.runs]
    assert len(set(all_spans)) == len(all_spans)


def test_foreign_ids_are_shared_by_several_runs() -> None:
    data = build_dataset("orders", seed=4, now=NOW)
    counts = Counter(run.foreign_id for run in data.runs)
    assert max(counts.values()) >= 2
    assert all(foreign.startswith("order-") for foreign in counts)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_dataset("orders", seed=1, now=datetime(2025, 1, 1))
