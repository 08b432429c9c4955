"""Analytics on small hand-built inputs whose answers are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.demo import analytics as calc
from flowwatch_gateway.demo.dataset import to_duration, to_timestamp
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2

# 2025-03-01 10:00:00 UTC = 1740823200, a multiple of 3600.
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
NANOS = 1_000_000_000


def run(
    run_id: str,
    minute: float,
    status: types_pb2.RunStatus,
    seconds: float | None = None,
    workflow: str = "wf",
) -> types_pb2.Run:
    started = T0 + timedelta(minutes=minute)
    result = types_pb2.Run(
        id=run_id,
        workflow_id=workflow,
        subsystem_id="s1",
        status=status,
        started_at=to_timestamp(started),
    )
    if seconds is not None:
        result.duration.CopyFrom(to_duration(timedelta(seconds=seconds)))
        result.finished_at.CopyFrom(to_timestamp(started + timedelta(seconds=seconds)))
    return result


def step(
    name: str,
    minute: float,
    seconds: float | None,
    wait: float = 0.0,
    status: types_pb2.StepStatus = types_pb2.STEP_STATUS_SUCCEEDED,
) -> types_pb2.StepExecution:
    execution = types_pb2.StepExecution(
        step_name=name,
        status=status,
        started_at=to_timestamp(T0 + timedelta(minutes=minute)),
        queue_wait=to_duration(timedelta(seconds=wait)),
    )
    if seconds is not None:
        execution.duration.CopyFrom(to_duration(timedelta(seconds=seconds)))
    return execution


def window(start_minute: float, end_minute: float, granularity: str) -> calc.Window:
    time_range = types_pb2.TimeRange(to=to_timestamp(T0 + timedelta(minutes=end_minute)))
    getattr(time_range, "from").CopyFrom(to_timestamp(T0 + timedelta(minutes=start_minute)))
    return calc.resolve_window(time_range, granularity, T0)


def seconds(value: object) -> float:
    return float(value.ToNanoseconds()) / NANOS  # type: ignore[attr-defined]


def test_buckets_are_epoch_aligned_even_for_unaligned_ranges() -> None:
    w = window(7, 130, "1h")  # 10:07 .. 12:10
    starts = [start // NANOS for start in w.bucket_starts()]
    base = int(T0.timestamp())
    assert starts == [base, base + 3600, base + 7200]
    w15 = window(7, 40, "15m")  # 10:07 .. 10:40 -> 10:00, 10:15, 10:30
    assert [s // NANOS - base for s in w15.bucket_starts()] == [0, 900, 1800]


def test_default_range_is_the_last_24_hours_in_hourly_buckets() -> None:
    now = T0 + timedelta(minutes=30)
    w = calc.resolve_window(types_pb2.TimeRange(), "", now)
    assert w.end_ns == int(now.timestamp()) * NANOS
    assert w.end_ns - w.start_ns == 24 * 3600 * NANOS
    assert w.bucket_ns == 3600 * NANOS
    assert len(w.bucket_starts()) == 25  # 09:00 yesterday .. 10:00 today


def test_bad_ranges_are_invalid_argument() -> None:
    with pytest.raises(ConnectError) as caught:
        window(10, 5, "1h")
    assert caught.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ConnectError) as caught:
        window(0, 60 * 24 * 30, "1m")
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "coarser granularity" in caught.value.message
    with pytest.raises(ConnectError) as caught:
        window(0, 5, "2h")
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_throughput_counts_each_status_and_emits_empty_buckets() -> None:
    runs = [
        run("a", 1, types_pb2.RUN_STATUS_SUCCEEDED, 10),
        run("b", 2, types_pb2.RUN_STATUS_FAILED, 10),
        run("c", 3, types_pb2.RUN_STATUS_RUNNING),
        run("d", 4, types_pb2.RUN_STATUS_PENDING),
        run("e", 16, types_pb2.RUN_STATUS_CANCELED, 5),
        run("f", 50, types_pb2.RUN_STATUS_SUCCEEDED, 5),  # outside the range
    ]
    w = window(0, 45, "15m")
    selected = calc.select_runs(runs, workflow_id="", subsystem_id="", window=w)
    buckets = calc.throughput(selected, w)
    rows = [(b.succeeded, b.failed, b.running, b.canceled, b.total) for b in buckets]
    assert rows == [(1, 1, 1, 0, 4), (0, 0, 0, 1, 1), (0, 0, 0, 0, 0)]
    assert [b.timestamp.ToDatetime(tzinfo=UTC) for b in buckets] == [
        T0,
        T0 + timedelta(minutes=15),
        T0 + timedelta(minutes=30),
    ]


def test_select_runs_filters_by_workflow_and_subsystem() -> None:
    runs = [
        run("a", 1, types_pb2.RUN_STATUS_SUCCEEDED, 1, workflow="x"),
        run("b", 1, types_pb2.RUN_STATUS_SUCCEEDED, 1, workflow="y"),
    ]
    w = window(0, 60, "1h")
    assert [r.id for r in calc.select_runs(runs, workflow_id="y", subsystem_id="", window=w)] == [
        "b"
    ]
    assert calc.select_runs(runs, workflow_id="", subsystem_id="other", window=w) == []
    assert len(calc.select_runs(runs, workflow_id="", subsystem_id="s1", window=w)) == 2


def test_failure_rate_is_failed_over_all_runs() -> None:
    runs = [
        run("a", 1, types_pb2.RUN_STATUS_SUCCEEDED, 1),
        run("b", 2, types_pb2.RUN_STATUS_FAILED, 1),
        run("c", 3, types_pb2.RUN_STATUS_FAILED, 1),
        run("d", 4, types_pb2.RUN_STATUS_RUNNING),
    ]
    buckets = calc.failure_rate(runs, window(0, 120, "1h"))
    assert [(b.total_runs, b.failed_runs, b.rate) for b in buckets] == [(4, 2, 0.5), (0, 0, 0.0)]


def test_latency_uses_nearest_rank_over_finished_runs() -> None:
    runs = [run(f"r{i}", 1, types_pb2.RUN_STATUS_SUCCEEDED, float(i)) for i in range(1, 21)]
    runs.append(run("active", 2, types_pb2.RUN_STATUS_RUNNING))
    buckets = calc.latency(runs, window(0, 120, "1h"))
    # 20 values 1..20 s: p50 = 10th = 10, p95 = 19th = 19, p99 = 20th = 20.
    assert [seconds(buckets[0].p50), seconds(buckets[0].p95), seconds(buckets[0].p99)] == [
        10,
        19,
        20,
    ]
    assert seconds(buckets[1].p50) == 0


def test_nearest_rank_edges() -> None:
    assert calc.nearest_rank([], 50) == 0
    assert calc.nearest_rank([7], 99) == 7
    assert calc.nearest_rank([1, 2, 3, 4], 50) == 2
    assert calc.nearest_rank([1, 2, 3, 4], 51) == 3


def test_step_heatmap_cells_for_every_step_and_bucket() -> None:
    executions = [
        step("load", 1, 2.0),
        step("load", 2, 4.0, status=types_pb2.STEP_STATUS_FAILED),
        step("load", 3, None, status=types_pb2.STEP_STATUS_RUNNING),
        step("emit", 70, 1.0),
        types_pb2.StepExecution(step_name="never", status=types_pb2.STEP_STATUS_PENDING),
    ]
    response = calc.step_heatmap(executions, window(0, 120, "1h"))
    assert list(response.step_names) == ["emit", "load"]
    assert len(response.bucket_timestamps) == 2
    cells = {
        (c.step_name, c.bucket_start.ToDatetime(tzinfo=UTC)): (
            c.total_executions,
            c.failed_executions,
            c.failure_rate,
            seconds(c.avg_duration),
        )
        for c in response.cells
    }
    assert cells == {
        ("load", T0): (3, 1, 1 / 3, 3.0),
        ("load", T0 + timedelta(hours=1)): (0, 0, 0.0, 0.0),
        ("emit", T0): (0, 0, 0.0, 0.0),
        ("emit", T0 + timedelta(hours=1)): (1, 0, 0.0, 1.0),
    }


def test_step_duration_percentiles_trend_and_bottleneck() -> None:
    executions = [step("fast", 1, 1.0, wait=0.5) for _ in range(4)]
    executions += [step("medium", 2, 2.0, wait=1.0) for _ in range(4)]
    executions += [step("slow", 70, 20.0, wait=1.0), step("slow", 71, 30.0, wait=2.0)]
    response = calc.step_duration(executions, window(0, 120, "1h"))
    by_name = {entry.step_name: entry for entry in response.steps}
    assert list(by_name) == ["fast", "medium", "slow"]
    slow = by_name["slow"]
    assert slow.sample_count == 2
    assert seconds(slow.execution.p50) == 20
    assert seconds(slow.execution.p95) == 30
    assert seconds(slow.queue_wait.p95) == 2
    assert seconds(slow.total.p50) == 21
    assert seconds(slow.total.p95) == 32
    # p95 totals: fast 1.5, medium 3, slow 32 -> median 3 -> threshold 6.
    assert seconds(response.bottleneck_threshold) == 6
    assert [by_name[n].is_bottleneck for n in ("fast", "medium", "slow")] == [False, False, True]
    assert [seconds(point.p50) for point in slow.trend] == [0, 21]
    assert [seconds(point.p50) for point in by_name["fast"].trend] == [1.5, 0]


def test_recent_health_and_stats_snapshot() -> None:
    now = T0 + timedelta(hours=2)
    runs = [
        run("old-fail", 0, types_pb2.RUN_STATUS_FAILED, 10),  # finished 2 h ago
        run("fail", 100, types_pb2.RUN_STATUS_FAILED, 10),
        run("ok1", 110, types_pb2.RUN_STATUS_SUCCEEDED, 10),
        run("ok2", 119.5, types_pb2.RUN_STATUS_SUCCEEDED, 5),  # finished 25 s ago
        run("busy", 119, types_pb2.RUN_STATUS_RUNNING),
        run("queued", 119, types_pb2.RUN_STATUS_PENDING),
        run("held", 100, types_pb2.RUN_STATUS_PAUSED),
    ]
    health = calc.recent_health(runs, now)
    assert (health.active_runs, health.failed_last_hour) == (3, 1)
    assert health.error_rate_last_hour == pytest.approx(1 / 3)
    snapshot = calc.stats_snapshot(runs, now)
    assert (snapshot.running, snapshot.paused) == (1, 1)
    assert (snapshot.succeeded_last_minute, snapshot.failed_last_minute) == (1, 0)
    assert snapshot.rate_per_minute == 1.0
    assert snapshot.error_rate == 0.0
