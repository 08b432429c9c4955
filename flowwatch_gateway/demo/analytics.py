"""Pure analytics over runs and step executions (no I/O, no clock).

Buckets are aligned to the UNIX epoch (`floor(t / g) * g`, UTC) so the buckets of
different subsystems line up and the gateway can add their counts. Every bucket in
the requested range is emitted, zeros included, in ascending order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import duration_pb2, timestamp_pb2

from flowwatch_gateway.api import sketch as sketches
from flowwatch_gateway.api.sketch import nearest_rank as nearest_rank  # the shared rule
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2 as analytics,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    stream_service_pb2 as stream,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    types_pb2,
)

NANOS = 1_000_000_000
GRANULARITY_SECONDS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
DEFAULT_GRANULARITY = "1h"
DEFAULT_RANGE = timedelta(hours=24)
# A week of minutes: enough for every UI view, small enough to answer quickly.
MAX_BUCKETS = 7 * 24 * 60
BOTTLENECK_FACTOR = 2

FINISHED = frozenset(
    {types_pb2.RUN_STATUS_SUCCEEDED, types_pb2.RUN_STATUS_FAILED, types_pb2.RUN_STATUS_CANCELED}
)


@dataclass(frozen=True)
class Window:
    """A half-open time range [start_ns, end_ns) cut into epoch-aligned buckets."""

    start_ns: int
    end_ns: int
    bucket_ns: int

    def contains(self, moment_ns: int) -> bool:
        return self.start_ns <= moment_ns < self.end_ns

    def bucket_of(self, moment_ns: int) -> int:
        return (moment_ns // self.bucket_ns) * self.bucket_ns

    def bucket_starts(self) -> list[int]:
        return list(range(self.bucket_of(self.start_ns), self.end_ns, self.bucket_ns))


def resolve_window(
    time_range: types_pb2.TimeRange, granularity: str, now: datetime, *, default_bucket: str = ""
) -> Window:
    """Apply the contract's defaults (last 24 h, "1h") and reject unusable ranges."""
    name = granularity or default_bucket or DEFAULT_GRANULARITY
    if name not in GRANULARITY_SECONDS:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"granularity must be one of {', '.join(GRANULARITY_SECONDS)}; got {granularity!r}",
        )
    now_ns = round(now.timestamp() * NANOS)
    from_field = getattr(time_range, "from")  # `from` is a Python keyword
    end_ns = time_range.to.ToNanoseconds() if time_range.HasField("to") else now_ns
    if time_range.HasField("from"):
        start_ns = from_field.ToNanoseconds()
    else:
        start_ns = end_ns - int(DEFAULT_RANGE.total_seconds()) * NANOS
    if end_ns <= start_ns:
        raise ConnectError(Code.INVALID_ARGUMENT, "time_range.to must be after time_range.from")
    window = Window(start_ns, end_ns, GRANULARITY_SECONDS[name] * NANOS)
    count = (end_ns - window.bucket_of(start_ns) + window.bucket_ns - 1) // window.bucket_ns
    if count > MAX_BUCKETS:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"time range and granularity {name!r} give {count} buckets; the limit is "
            f"{MAX_BUCKETS}: use a coarser granularity or a shorter range",
        )
    return window


def nanos_of(stamp: timestamp_pb2.Timestamp) -> int:
    return int(stamp.ToNanoseconds())


def timestamp_at(moment_ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(moment_ns)
    return stamp


def duration_of(nanos: int) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(nanos)
    return value


def select_runs(
    runs: Iterable[types_pb2.Run], *, workflow_id: str, subsystem_id: str, window: Window
) -> list[types_pb2.Run]:
    """Runs of the workflow/subsystem (empty = any) that started inside the window."""
    return [
        run
        for run in runs
        if (not workflow_id or run.workflow_id == workflow_id)
        and (not subsystem_id or run.subsystem_id == subsystem_id)
        and run.HasField("started_at")
        and window.contains(nanos_of(run.started_at))
    ]


def _by_bucket(runs: Iterable[types_pb2.Run], window: Window) -> dict[int, list[types_pb2.Run]]:
    grouped: dict[int, list[types_pb2.Run]] = defaultdict(list)
    for run in runs:
        grouped[window.bucket_of(nanos_of(run.started_at))].append(run)
    return grouped


def throughput(runs: Sequence[types_pb2.Run], window: Window) -> list[analytics.ThroughputBucket]:
    """Runs per started_at bucket by status; `total` counts every status."""
    grouped = _by_bucket(runs, window)
    buckets = []
    for start in window.bucket_starts():
        members = grouped.get(start, [])
        statuses = [run.status for run in members]
        buckets.append(
            analytics.ThroughputBucket(
                timestamp=timestamp_at(start),
                succeeded=statuses.count(types_pb2.RUN_STATUS_SUCCEEDED),
                failed=statuses.count(types_pb2.RUN_STATUS_FAILED),
                running=statuses.count(types_pb2.RUN_STATUS_RUNNING),
                canceled=statuses.count(types_pb2.RUN_STATUS_CANCELED),
                total=len(members),
            )
        )
    return buckets


def failure_rate(
    runs: Sequence[types_pb2.Run], window: Window
) -> list[analytics.FailureRateBucket]:
    """failed / all runs started in the bucket (0 for an empty bucket)."""
    grouped = _by_bucket(runs, window)
    buckets = []
    for start in window.bucket_starts():
        members = grouped.get(start, [])
        failed = sum(run.status == types_pb2.RUN_STATUS_FAILED for run in members)
        buckets.append(
            analytics.FailureRateBucket(
                timestamp=timestamp_at(start),
                rate=failed / len(members) if members else 0.0,
                total_runs=len(members),
                failed_runs=failed,
            )
        )
    return buckets


def _sketch_of(values: Iterable[int]) -> analytics.DurationSketch:
    return sketches.to_proto(sketches.DurationSketch.of(values))


def latency(runs: Sequence[types_pb2.Run], window: Window) -> list[analytics.LatencyBucket]:
    """Nearest-rank p50/p95/p99 of finished runs' durations per started_at bucket.

    Each bucket carries a sketch of its durations (empty ones too: "none here" is
    different from "no sketch"), so the gateway can merge subsystems accurately.
    """
    grouped = _by_bucket(
        (run for run in runs if run.status in FINISHED and run.HasField("duration")), window
    )
    buckets = []
    for start in window.bucket_starts():
        values = sorted(int(run.duration.ToNanoseconds()) for run in grouped.get(start, []))
        buckets.append(
            analytics.LatencyBucket(
                timestamp=timestamp_at(start),
                p50=duration_of(nearest_rank(values, 50)),
                p95=duration_of(nearest_rank(values, 95)),
                p99=duration_of(nearest_rank(values, 99)),
                sketch=_sketch_of(values),
            )
        )
    return buckets


def step_heatmap(
    executions: Iterable[types_pb2.StepExecution], window: Window
) -> analytics.GetStepHeatmapResponse:
    """A cell per (step, bucket) for executions that started in the window.

    `avg_duration` averages the executions that have a duration (finished ones).
    """
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    timed_values: dict[tuple[str, int], list[int]] = defaultdict(list)
    names: set[str] = set()
    for execution in executions:
        if not execution.HasField("started_at"):
            continue
        moment = nanos_of(execution.started_at)
        if not window.contains(moment):
            continue
        names.add(execution.step_name)
        cell = counts[(execution.step_name, window.bucket_of(moment))]
        cell[0] += 1
        cell[1] += execution.status == types_pb2.STEP_STATUS_FAILED
        if execution.HasField("duration"):
            cell[2] += int(execution.duration.ToNanoseconds())
            cell[3] += 1
            timed_values[(execution.step_name, window.bucket_of(moment))].append(
                int(execution.duration.ToNanoseconds())
            )
    starts = window.bucket_starts()
    response = analytics.GetStepHeatmapResponse(
        step_names=sorted(names), bucket_timestamps=[timestamp_at(start) for start in starts]
    )
    for name in response.step_names:
        for start in starts:
            total, failed, duration_sum, timed = counts.get((name, start), (0, 0, 0, 0))
            response.cells.add(
                step_name=name,
                bucket_start=timestamp_at(start),
                failure_rate=failed / total if total else 0.0,
                total_executions=total,
                failed_executions=failed,
                avg_duration=duration_of(duration_sum // timed if timed else 0),
                duration_sketch=_sketch_of(timed_values.get((name, start), [])),
            )
    return response


def _percentiles(values: list[int]) -> analytics.DurationPercentiles:
    values.sort()
    return analytics.DurationPercentiles(
        p50=duration_of(nearest_rank(values, 50)),
        p95=duration_of(nearest_rank(values, 95)),
        p99=duration_of(nearest_rank(values, 99)),
    )


def step_duration(
    executions: Iterable[types_pb2.StepExecution], window: Window
) -> analytics.GetStepDurationResponse:
    """Per-step queue/execution/total percentiles of finished executions in the window.

    The trend uses the window's buckets; a step is a bottleneck when its p95 total
    exceeds BOTTLENECK_FACTOR x the median (nearest-rank) of all steps' p95 totals.
    """
    samples: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for execution in executions:
        if not (execution.HasField("started_at") and execution.HasField("duration")):
            continue
        moment = nanos_of(execution.started_at)
        if window.contains(moment):
            samples[execution.step_name].append(
                (
                    moment,
                    int(execution.queue_wait.ToNanoseconds()),
                    int(execution.duration.ToNanoseconds()),
                )
            )
    starts = window.bucket_starts()
    response = analytics.GetStepDurationResponse()
    p95_totals: list[int] = []
    for name in sorted(samples):
        rows = samples[name]
        totals = [wait + run for _, wait, run in rows]
        entry = response.steps.add(
            step_name=name,
            queue_wait=_percentiles([wait for _, wait, _ in rows]),
            execution=_percentiles([run for _, _, run in rows]),
            total=_percentiles(list(totals)),
            sample_count=len(rows),
            queue_wait_sketch=_sketch_of(wait for _, wait, _ in rows),
            execution_sketch=_sketch_of(run for _, _, run in rows),
            total_sketch=_sketch_of(totals),
        )
        p95_totals.append(int(entry.total.p95.ToNanoseconds()))
        per_bucket: dict[int, list[int]] = defaultdict(list)
        for (moment, _, _), total in zip(rows, totals, strict=True):
            per_bucket[window.bucket_of(moment)].append(total)
        for start in starts:
            values = sorted(per_bucket.get(start, []))
            entry.trend.add(
                timestamp=timestamp_at(start),
                p50=duration_of(nearest_rank(values, 50)),
                p95=duration_of(nearest_rank(values, 95)),
                p99=duration_of(nearest_rank(values, 99)),
                sketch=_sketch_of(values),
            )
    threshold = BOTTLENECK_FACTOR * nearest_rank(sorted(p95_totals), 50)
    response.bottleneck_threshold.CopyFrom(duration_of(threshold))
    for entry in response.steps:
        entry.is_bottleneck = threshold > 0 and entry.total.p95.ToNanoseconds() > threshold
    return response


SketchedResponse = TypeVar(
    "SketchedResponse",
    analytics.GetLatencyResponse,
    analytics.GetStepHeatmapResponse,
    analytics.GetStepDurationResponse,
)


def without_sketches(response: SketchedResponse) -> SketchedResponse:
    """The same answer as a subsystem that knows nothing of sketches would give."""
    if isinstance(response, analytics.GetLatencyResponse):
        for bucket in response.buckets:
            bucket.ClearField("sketch")
    elif isinstance(response, analytics.GetStepHeatmapResponse):
        for cell in response.cells:
            cell.ClearField("duration_sketch")
    else:
        for entry in response.steps:
            for name in ("queue_wait_sketch", "execution_sketch", "total_sketch"):
                entry.ClearField(name)
            for point in entry.trend:
                point.ClearField("sketch")
    return response


@dataclass(frozen=True)
class RecentHealth:
    """What ListSubsystems reports about the last hour and the active runs."""

    active_runs: int
    failed_last_hour: int
    error_rate_last_hour: float


def recent_health(runs: Iterable[types_pb2.Run], now: datetime) -> RecentHealth:
    """active = pending+running+paused; error rate = failed / finished in the last hour."""
    hour_ago_ns = round((now - timedelta(hours=1)).timestamp() * NANOS)
    now_ns = round(now.timestamp() * NANOS)
    active = failed = finished = 0
    for run in runs:
        if run.status in (
            types_pb2.RUN_STATUS_PENDING,
            types_pb2.RUN_STATUS_RUNNING,
            types_pb2.RUN_STATUS_PAUSED,
        ):
            active += 1
        elif run.HasField("finished_at") and hour_ago_ns <= nanos_of(run.finished_at) <= now_ns:
            finished += 1
            failed += run.status == types_pb2.RUN_STATUS_FAILED
    return RecentHealth(active, failed, failed / finished if finished else 0.0)


def stats_snapshot(runs: Iterable[types_pb2.Run], now: datetime) -> stream.StatsSnapshot:
    """Live counters: running/paused now, and runs finished during the last minute."""
    now_ns = round(now.timestamp() * NANOS)
    minute_ago_ns = now_ns - 60 * NANOS
    running = paused = succeeded = failed = finished = 0
    for run in runs:
        running += run.status == types_pb2.RUN_STATUS_RUNNING
        paused += run.status == types_pb2.RUN_STATUS_PAUSED
        if run.HasField("finished_at") and minute_ago_ns <= nanos_of(run.finished_at) <= now_ns:
            finished += 1
            succeeded += run.status == types_pb2.RUN_STATUS_SUCCEEDED
            failed += run.status == types_pb2.RUN_STATUS_FAILED
    return stream.StatsSnapshot(
        timestamp=timestamp_at(now_ns),
        running=running,
        succeeded_last_minute=succeeded,
        failed_last_minute=failed,
        paused=paused,
        rate_per_minute=float(finished),
        error_rate=failed / finished if finished else 0.0,
    )
