"""Merging analytics: counts add exactly; percentiles cannot be merged from percentiles.

Every function takes only the successful answers, keyed by subsystem id, and is
deterministic: subsystems are visited in sorted id order. The percentile merges say
whether the result is approximate (see `merge_latency`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf import timestamp_pb2

from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2 as analytics,
)
from flowwatch_gateway.proxy.merge._protobuf import TimestampKey, duration_of, timestamp_key


def merge_throughput(
    responses: Mapping[str, analytics.GetThroughputResponse],
) -> analytics.GetThroughputResponse:
    """Per bucket timestamp, every count summed; buckets sorted ascending."""
    merged: dict[TimestampKey, analytics.ThroughputBucket] = {}
    for bucket in _all(responses, lambda response: response.buckets):
        target = merged.setdefault(
            timestamp_key(bucket.timestamp), analytics.ThroughputBucket(timestamp=bucket.timestamp)
        )
        target.succeeded += bucket.succeeded
        target.failed += bucket.failed
        target.running += bucket.running
        target.canceled += bucket.canceled
        target.total += bucket.total
    return analytics.GetThroughputResponse(buckets=[merged[key] for key in sorted(merged)])


def throughput_weights(
    responses: Mapping[str, analytics.GetThroughputResponse],
) -> dict[str, dict[int, int]]:
    """Runs per instance per bucket (epoch seconds), the weights merge_latency wants.

    `total` when set, else the sum of the per-status counts.
    """
    weights: dict[str, dict[int, int]] = {}
    for instance_id, response in responses.items():
        per_bucket = weights.setdefault(instance_id, {})
        for bucket in response.buckets:
            runs_in_bucket = bucket.total or (
                bucket.succeeded + bucket.failed + bucket.running + bucket.canceled
            )
            seconds = bucket.timestamp.seconds
            per_bucket[seconds] = per_bucket.get(seconds, 0) + runs_in_bucket
    return weights


def merge_failure_rate(
    responses: Mapping[str, analytics.GetFailureRateResponse],
) -> analytics.GetFailureRateResponse:
    """Per bucket timestamp, totals and failures summed and rate = failed/total (0 if none)."""
    merged: dict[TimestampKey, analytics.FailureRateBucket] = {}
    for bucket in _all(responses, lambda response: response.buckets):
        target = merged.setdefault(
            timestamp_key(bucket.timestamp), analytics.FailureRateBucket(timestamp=bucket.timestamp)
        )
        target.total_runs += bucket.total_runs
        target.failed_runs += bucket.failed_runs
    for target in merged.values():
        target.rate = target.failed_runs / target.total_runs if target.total_runs else 0.0
    return analytics.GetFailureRateResponse(buckets=[merged[key] for key in sorted(merged)])


def merge_heatmap(
    responses: Mapping[str, analytics.GetStepHeatmapResponse],
) -> analytics.GetStepHeatmapResponse:
    """Cells merged per (step name, bucket start).

    Executions and failures add, failure_rate = failed/total (0 if none), and
    avg_duration is the mean weighted by total_executions (exact: a weighted mean
    of means is the mean of the union); with no executions at all the plain mean.
    step_names and bucket_timestamps are the sorted unions. Cells are sorted by
    (step name, bucket start).
    """
    groups: dict[tuple[str, TimestampKey], list[analytics.HeatmapCell]] = {}
    step_names: set[str] = set()
    timestamps: dict[TimestampKey, timestamp_pb2.Timestamp] = {}
    for instance_id in sorted(responses):
        response = responses[instance_id]
        step_names.update(response.step_names)
        for stamp in response.bucket_timestamps:
            timestamps.setdefault(timestamp_key(stamp), stamp)
        for cell in response.cells:
            groups.setdefault((cell.step_name, timestamp_key(cell.bucket_start)), []).append(cell)
            step_names.add(cell.step_name)
            timestamps.setdefault(timestamp_key(cell.bucket_start), cell.bucket_start)

    merged = analytics.GetStepHeatmapResponse(
        step_names=sorted(step_names), bucket_timestamps=[timestamps[k] for k in sorted(timestamps)]
    )
    for group_key in sorted(groups):
        cells = groups[group_key]
        total = sum(cell.total_executions for cell in cells)
        failed = sum(cell.failed_executions for cell in cells)
        cell = analytics.HeatmapCell(
            step_name=cells[0].step_name,
            bucket_start=cells[0].bucket_start,
            total_executions=total,
            failed_executions=failed,
            failure_rate=failed / total if total else 0.0,
        )
        if len(cells) == 1:
            if cells[0].HasField("avg_duration"):
                cell.avg_duration.CopyFrom(cells[0].avg_duration)
        else:
            weighted = [
                (int(c.avg_duration.ToNanoseconds()), c.total_executions if total else 1)
                for c in cells
            ]
            cell.avg_duration.CopyFrom(duration_of(_weighted_mean(weighted)))
        merged.cells.append(cell)
    return merged


def merge_latency(
    responses: Mapping[str, analytics.GetLatencyResponse],
    weights: Mapping[str, Mapping[int, int]] | None = None,
) -> tuple[analytics.GetLatencyResponse, bool]:
    """Per bucket timestamp, latency percentiles across instances; True if approximate.

    A percentile of a union cannot be computed from the parts' percentiles. When
    exactly one instance has data for a bucket, its bucket is passed through as
    is (exact). Otherwise each of p50/p95/p99 is the weighted mean of the
    instances' values, weighted by their run counts in that bucket
    (`weights[instance][epoch seconds]`, e.g. from `throughput_weights`), or
    equally when counts are missing. A weighted mean always lies within
    [min, max] of the instances' values and keeps p50 <= p95 <= p99. An instance
    with all-zero percentiles or a known count of 0 for the bucket has no data
    there and is left out, so it cannot drag the result down.
    """
    candidates: dict[TimestampKey, list[tuple[str, analytics.LatencyBucket]]] = {}
    for instance_id in sorted(responses):
        seen: set[TimestampKey] = set()
        for bucket in responses[instance_id].buckets:
            key = timestamp_key(bucket.timestamp)
            if key not in seen:
                seen.add(key)
                candidates.setdefault(key, []).append((instance_id, bucket))

    merged = analytics.GetLatencyResponse()
    approximate = False
    for key in sorted(candidates):
        members = candidates[key]
        parts = [
            _Part(_bucket_values(bucket), _latency_weight(weights, instance_id, key[0]))
            for instance_id, bucket in members
        ]
        outcome = _merge_parts(parts)
        if outcome.values is None:
            merged.buckets.append(members[outcome.source][1])
            continue
        approximate = True
        p50, p95, p99 = (duration_of(value) for value in outcome.values)
        merged.buckets.append(
            analytics.LatencyBucket(timestamp=members[0][1].timestamp, p50=p50, p95=p95, p99=p99)
        )
    return merged, approximate


def merge_step_duration(
    responses: Mapping[str, analytics.GetStepDurationResponse],
) -> tuple[analytics.GetStepDurationResponse, bool]:
    """Step duration percentiles across instances; True if approximate.

    A single answer passes through unchanged. Otherwise steps are merged by name
    (first-appearance order over instances by id) with the same method as
    `merge_latency`: one instance with samples -> its values as they are;
    several -> the mean of each percentile (queue_wait, execution, total)
    weighted by sample_count, equal weights if no instance reports counts;
    instances with no samples are left out. sample_count adds up. Trend points
    merge per timestamp the same way, weighted by their step's sample_count.
    bottleneck_threshold is the instances' thresholds averaged the same way
    (weights: each instance's total samples) and is_bottleneck is recomputed as
    total.p95 > bottleneck_threshold.
    """
    if len(responses) <= 1:
        single = analytics.GetStepDurationResponse()
        for response in responses.values():
            single.CopyFrom(response)
        return single, False

    order: list[str] = []
    entries: dict[str, list[analytics.StepDurationEntry]] = {}
    for instance_id in sorted(responses):
        seen: set[str] = set()
        for entry in responses[instance_id].steps:
            if entry.step_name in seen:
                continue
            seen.add(entry.step_name)
            if entry.step_name not in entries:
                order.append(entry.step_name)
            entries.setdefault(entry.step_name, []).append(entry)

    approximate = False
    merged = analytics.GetStepDurationResponse()
    threshold_parts = [
        _Part(
            (int(response.bottleneck_threshold.ToNanoseconds()),),
            sum(entry.sample_count for entry in response.steps),
        )
        for _, response in sorted(responses.items())
    ]
    threshold = _merge_parts(threshold_parts)
    if threshold.values is not None:
        approximate = True
        merged.bottleneck_threshold.CopyFrom(duration_of(threshold.values[0]))
    elif threshold.source >= 0:
        source = sorted(responses.items())[threshold.source][1]
        if source.HasField("bottleneck_threshold"):
            merged.bottleneck_threshold.CopyFrom(source.bottleneck_threshold)
    threshold_ns = int(merged.bottleneck_threshold.ToNanoseconds())

    for step_name in order:
        step, step_approximate = _merge_step(entries[step_name])
        approximate = approximate or step_approximate
        step.is_bottleneck = int(step.total.p95.ToNanoseconds()) > threshold_ns
        merged.steps.append(step)
    return merged, approximate


def _merge_step(
    entries: Sequence[analytics.StepDurationEntry],
) -> tuple[analytics.StepDurationEntry, bool]:
    parts = [_Part(_entry_values(entry), int(entry.sample_count)) for entry in entries]
    outcome = _merge_parts(parts)
    step = analytics.StepDurationEntry()
    if outcome.values is None:
        step.CopyFrom(entries[outcome.source])
        step.ClearField("trend")
    else:
        step.step_name = entries[0].step_name
        for name, offset in (("queue_wait", 0), ("execution", 3), ("total", 6)):
            getattr(step, name).CopyFrom(_percentiles(outcome.values[offset : offset + 3]))
    step.sample_count = sum(entry.sample_count for entry in entries)

    trend_approximate = False
    points: dict[TimestampKey, list[tuple[analytics.StepDurationTrendPoint, int]]] = {}
    for entry in entries:
        seen: set[TimestampKey] = set()
        for point in entry.trend:
            key = timestamp_key(point.timestamp)
            if key not in seen:
                seen.add(key)
                points.setdefault(key, []).append((point, int(entry.sample_count)))
    for key in sorted(points):
        members = points[key]
        point_outcome = _merge_parts([_Part(_bucket_values(p), w) for p, w in members])
        if point_outcome.values is None:
            step.trend.append(members[point_outcome.source][0])
            continue
        trend_approximate = True
        p50, p95, p99 = (duration_of(value) for value in point_outcome.values)
        step.trend.append(
            analytics.StepDurationTrendPoint(
                timestamp=members[0][0].timestamp, p50=p50, p95=p95, p99=p99
            )
        )
    return step, outcome.values is not None or trend_approximate


@dataclass(frozen=True)
class _Part:
    """One instance's percentile values (nanoseconds) and its weight (None = unknown)."""

    values: tuple[int, ...]
    weight: int | None


@dataclass(frozen=True)
class _Outcome:
    """Either pass `source`'s values through (values None) or use the merged `values`."""

    source: int
    values: tuple[int, ...] | None


def _merge_parts(parts: Sequence[_Part]) -> _Outcome:
    """The weighted-mean rule shared by every percentile merge.

    Parts with all-zero values, or a known weight of 0, hold no data. If only one
    part holds data it is used as is (exact). If none does, the first part passes
    through (all zeros anyway; source -1 if there are no parts at all). Otherwise
    each value is the mean weighted by the parts' weights when all are known and
    positive, else the plain mean.
    """
    with_data = [index for index, part in enumerate(parts) if any(parts[index].values)]
    counted = [index for index in with_data if parts[index].weight != 0]
    # Counts of 0 next to real values (e.g. throughput bucketed differently) would
    # drop every part; then the values themselves are the better evidence.
    chosen = counted or with_data
    if not chosen:
        return _Outcome(0 if parts else -1, None)
    if len(chosen) == 1:
        return _Outcome(chosen[0], None)
    weights = [parts[index].weight for index in chosen]
    use_weights = all(weight is not None and weight > 0 for weight in weights)
    values = tuple(
        _weighted_mean(
            [
                (parts[index].values[position], (parts[index].weight or 0) if use_weights else 1)
                for index in chosen
            ]
        )
        for position in range(len(parts[chosen[0]].values))
    )
    return _Outcome(chosen[0], values)


def _weighted_mean(pairs: Sequence[tuple[int, int]]) -> int:
    """Integer mean of (value, weight) rounded half up; stays within [min, max] of the values."""
    total_weight = sum(weight for _, weight in pairs)
    if total_weight <= 0:
        return pairs[0][0] if pairs else 0
    weighted_sum = sum(value * weight for value, weight in pairs)
    return (2 * weighted_sum + total_weight) // (2 * total_weight)


def _latency_weight(
    weights: Mapping[str, Mapping[int, int]] | None, instance_id: str, seconds: int
) -> int | None:
    if weights is None or instance_id not in weights:
        return None
    return weights[instance_id].get(seconds, 0)


def _bucket_values(
    bucket: analytics.LatencyBucket | analytics.StepDurationTrendPoint,
) -> tuple[int, ...]:
    return (
        int(bucket.p50.ToNanoseconds()),
        int(bucket.p95.ToNanoseconds()),
        int(bucket.p99.ToNanoseconds()),
    )


def _entry_values(entry: analytics.StepDurationEntry) -> tuple[int, ...]:
    return tuple(
        int(getattr(percentiles, name).ToNanoseconds())
        for percentiles in (entry.queue_wait, entry.execution, entry.total)
        for name in ("p50", "p95", "p99")
    )


def _percentiles(values: Sequence[int]) -> analytics.DurationPercentiles:
    return analytics.DurationPercentiles(
        p50=duration_of(values[0]), p95=duration_of(values[1]), p99=duration_of(values[2])
    )


ItemT = TypeVar("ItemT")


ResponseT = TypeVar("ResponseT")


def _all(
    responses: Mapping[str, ResponseT], items: Callable[[ResponseT], Iterable[ItemT]]
) -> Iterable[ItemT]:
    """Items of every response, instances in sorted id order."""
    for instance_id in sorted(responses):
        yield from items(responses[instance_id])
