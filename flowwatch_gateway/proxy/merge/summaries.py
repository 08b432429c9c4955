"""Percentile merges that tell the truth: exact values, sketches, or a flagged mean.

A percentile of several subsystems' data together is computed from the best each
subsystem can give, per bucket (or step, or trend point):

- one subsystem with data: its own answer passes through (exact by its own rule);
- every contributor's exact durations are known (the gateway listed their runs):
  the nearest-rank percentile of the union (`exact`);
- every contributor sent a sketch or its exact durations: the merged sketch's
  nearest-rank quantile, within the sketches' relative accuracy (`sketch`);
- otherwise the run-weighted mean of the subsystems' percentiles (`approximate`),
  the old rule (see merge/analytics.py), with the reason the better ones failed.

The answer's `Method` is the worst one any part needed. Pure functions; the proxy
(proxy/analytics.py) decides whom to list and passes the durations in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from flowwatch_gateway.api import sketch as sketches
from flowwatch_gateway.api.sketch import DurationSketch, SketchError, nearest_rank
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.proxy.merge._protobuf import duration_of
from flowwatch_gateway.proxy.merge.analytics import (
    _bucket_values,
    _merge_parts,
    _merge_step,
    _Part,
    merge_heatmap,
    merge_step_duration,
)

__all__ = [
    "EXACT",
    "Method",
    "Summary",
    "latency_listing_candidates",
    "merge_heatmap_summaries",
    "merge_latency_summaries",
    "merge_step_duration_summaries",
]

MethodKind = Literal["exact", "sketch", "approximate"]
_RANK: dict[MethodKind, int] = {"exact": 0, "sketch": 1, "approximate": 2}
PERCENTS = (50, 95, 99)


@dataclass(frozen=True)
class Method:
    """How an answer was computed, as the `flowwatch-analytics-method` header says it."""

    kind: MethodKind
    relative_error: float = 0.0
    reason: str = ""

    def header(self) -> str:
        if self.kind == "sketch":
            return f"sketch;rel-err={self.relative_error:g}"
        if self.kind == "approximate":
            return f"approximate;reason={self.reason}"
        return "exact"

    def worst(self, other: Method) -> Method:
        """The weaker of two methods; equal kinds keep the larger error bound."""
        if _RANK[other.kind] != _RANK[self.kind]:
            return other if _RANK[other.kind] > _RANK[self.kind] else self
        if other.relative_error > self.relative_error:
            return other
        return self


EXACT = Method("exact")


@dataclass(frozen=True)
class Summary:
    """What one subsystem contributes to one bucket: exact values, a sketch, or neither."""

    values: Sequence[int] | None = None  # ascending exact durations (ns)
    sketch: DurationSketch | None = None
    percentiles: tuple[int, ...] = ()
    weight: int | None = None

    @property
    def mergeable(self) -> bool:
        return self.values is not None or self.sketch is not None


def usable_sketch(message: analytics.DurationSketch | None) -> DurationSketch | None:
    """A subsystem's sketch if it sent a well-formed one; None otherwise."""
    if message is None:
        return None
    try:
        return sketches.from_proto(message)
    except SketchError:
        return None


def _latency_summary(
    bucket: analytics.LatencyBucket,
    listed: Mapping[int, Sequence[int]] | None,
    weight: int | None,
) -> Summary | None:
    """None when the subsystem has no finished runs in the bucket."""
    if listed is not None:
        values = listed.get(int(bucket.timestamp.ToNanoseconds()), ())
        return Summary(values=values, percentiles=_bucket_values(bucket)) if values else None
    sketch = usable_sketch(bucket.sketch if bucket.HasField("sketch") else None)
    if sketch is not None:
        return Summary(sketch=sketch, percentiles=_bucket_values(bucket)) if sketch.count else None
    values = _bucket_values(bucket)
    if not any(values):
        return None
    return Summary(percentiles=values, weight=weight)


def latency_listing_candidates(
    responses: Mapping[str, analytics.GetLatencyResponse],
) -> set[str]:
    """Subsystems whose run durations are needed: they share a bucket with another
    subsystem's data and sent no usable sketch for it."""
    by_bucket: dict[int, list[tuple[str, Summary]]] = {}
    for instance_id, response in responses.items():
        for bucket in response.buckets:
            summary = _latency_summary(bucket, None, None)
            if summary is not None:
                key = int(bucket.timestamp.ToNanoseconds())
                by_bucket.setdefault(key, []).append((instance_id, summary))
    wanted: set[str] = set()
    for members in by_bucket.values():
        if len(members) > 1:
            wanted.update(iid for iid, summary in members if not summary.mergeable)
    return wanted


def merge_summaries(
    summaries: Sequence[Summary], fallback_reason: str
) -> tuple[tuple[int, ...], DurationSketch | None, Method]:
    """p50/p95/p99 of two or more contributors, the merged sketch if any, and the method."""
    if all(summary.values is not None for summary in summaries):
        union = sorted(value for summary in summaries for value in summary.values or ())
        return (
            tuple(nearest_rank(union, percent) for percent in PERCENTS),
            DurationSketch.of(union),
            EXACT,
        )
    if all(summary.mergeable for summary in summaries):
        try:
            merged = _merged_sketch(summaries)
        except SketchError:
            fallback_reason = "sketch-accuracy-mismatch"
        else:
            return (
                tuple(merged.quantile(percent) for percent in PERCENTS),
                merged,
                Method("sketch", merged.relative_accuracy),
            )
    outcome = _merge_parts([_Part(s.percentiles, s.weight) for s in summaries])
    values = outcome.values or summaries[max(outcome.source, 0)].percentiles
    return values, None, Method("approximate", reason=fallback_reason)


def _merged_sketch(summaries: Sequence[Summary]) -> DurationSketch:
    """Sketches merged; exact values are added at the sketches' common accuracy."""
    accuracies = {s.sketch.relative_accuracy for s in summaries if s.sketch is not None}
    if len(accuracies) > 1:
        raise SketchError(f"sketches of different accuracies: {sorted(accuracies)}")
    merged = DurationSketch(next(iter(accuracies), sketches.DEFAULT_RELATIVE_ACCURACY))
    for summary in summaries:
        if summary.sketch is not None:
            merged.merge(summary.sketch)
        for value in summary.values or ():
            merged.add(value)
    return merged


def merge_latency_summaries(
    responses: Mapping[str, analytics.GetLatencyResponse],
    weights: Mapping[str, Mapping[int, int]] | None = None,
    listed: Mapping[str, Mapping[int, Sequence[int]]] | None = None,
    fallback_reason: str = "no-sketch",
) -> tuple[analytics.GetLatencyResponse, Method]:
    """Latency buckets merged per timestamp with the best method each bucket allows.

    `listed[instance][bucket start ns]` holds a subsystem's exact durations (the
    gateway listed its finished runs); a listed subsystem with no entry for a bucket
    has no runs there. `weights[instance][epoch seconds]` are the run counts the
    weighted-mean fallback uses. Merged buckets carry the merged sketch, so another
    gateway in front of this one can merge further.
    """
    listed = listed or {}
    members: dict[int, list[tuple[str, analytics.LatencyBucket]]] = {}
    for instance_id in sorted(responses):
        seen: set[int] = set()
        for bucket in responses[instance_id].buckets:
            key = int(bucket.timestamp.ToNanoseconds())
            if key not in seen:
                seen.add(key)
                members.setdefault(key, []).append((instance_id, bucket))

    merged = analytics.GetLatencyResponse()
    method = EXACT
    for key in sorted(members):
        parts = members[key]
        contributors = []
        for instance_id, bucket in parts:
            weight = None
            if weights is not None and instance_id in weights:
                weight = weights[instance_id].get(bucket.timestamp.seconds, 0)
            summary = _latency_summary(bucket, listed.get(instance_id), weight)
            if summary is not None:
                contributors.append((bucket, summary))
        if len(contributors) <= 1:
            # One subsystem's own percentiles are exact by its own rule.
            merged.buckets.append(contributors[0][0] if contributors else parts[0][1])
            continue
        values, sketch, bucket_method = merge_summaries(
            [summary for _, summary in contributors], fallback_reason
        )
        method = method.worst(bucket_method)
        out = analytics.LatencyBucket(timestamp=parts[0][1].timestamp)
        out.p50.CopyFrom(duration_of(values[0]))
        out.p95.CopyFrom(duration_of(values[1]))
        out.p99.CopyFrom(duration_of(values[2]))
        if sketch is not None:
            out.sketch.CopyFrom(sketches.to_proto(sketch))
        merged.buckets.append(out)
    return merged, method


# --- step durations ------------------------------------------------------------------

_STEP_SKETCHES = ("queue_wait_sketch", "execution_sketch", "total_sketch")
_STEP_PERCENTILES = ("queue_wait", "execution", "total")


def _step_sketches(entry: analytics.StepDurationEntry) -> list[DurationSketch] | None:
    found = [
        usable_sketch(getattr(entry, name) if entry.HasField(name) else None)
        for name in _STEP_SKETCHES
    ]
    if any(sketch is None for sketch in found):
        return None
    return [sketch for sketch in found if sketch is not None]


def _step_has_data(entry: analytics.StepDurationEntry) -> bool:
    if entry.sample_count > 0:
        return True
    return (
        entry.sample_count == 0
        and _step_sketches(entry) is None
        and any(getattr(entry, name).p50.ToNanoseconds() for name in _STEP_PERCENTILES)
    )


def merge_step_duration_summaries(
    responses: Mapping[str, analytics.GetStepDurationResponse],
) -> tuple[analytics.GetStepDurationResponse, Method]:
    """Steps merged by name: sketches when every subsystem with samples sent them.

    Starts from `merge_step_duration` (ordering, sample counts, the weighted-mean
    fallback, bottleneck_threshold averaged by samples) and replaces the
    percentiles of each step and trend point whose contributors all sent sketches
    with the merged sketch's quantiles; is_bottleneck is then recomputed against the
    threshold. The threshold is each subsystem's own cut-off, averaged; it is not a
    percentile of the union and does not change the method.
    """
    base, _ = merge_step_duration(responses)
    if len(responses) <= 1:
        return base, EXACT
    entries: dict[str, list[analytics.StepDurationEntry]] = {}
    for instance_id in sorted(responses):
        for entry in responses[instance_id].steps:
            entries.setdefault(entry.step_name, []).append(entry)

    method = EXACT
    threshold_ns = int(base.bottleneck_threshold.ToNanoseconds())
    for step in base.steps:
        contributors = [e for e in entries[step.step_name] if _step_has_data(e)]
        if len(contributors) == 1:
            own = contributors[0]
            for name in (*_STEP_PERCENTILES, *_STEP_SKETCHES):
                if own.HasField(name):
                    getattr(step, name).CopyFrom(getattr(own, name))
        elif len(contributors) > 1:
            found = [_step_sketches(entry) for entry in contributors]
            if all(f is not None for f in found):
                try:
                    for position, name in enumerate(_STEP_PERCENTILES):
                        merged = sketches.merge_all(f[position] for f in found if f is not None)
                        assert merged is not None  # two or more contributors
                        getattr(step, name).CopyFrom(_percentiles_of(merged))
                        getattr(step, _STEP_SKETCHES[position]).CopyFrom(sketches.to_proto(merged))
                        method = method.worst(Method("sketch", merged.relative_accuracy))
                except SketchError:
                    fallback, _ = _merge_step(contributors)
                    for name in _STEP_PERCENTILES:
                        getattr(step, name).CopyFrom(getattr(fallback, name))
                    method = method.worst(Method("approximate", reason="sketch-accuracy-mismatch"))
            else:
                fallback, _ = _merge_step(contributors)
                for name in _STEP_PERCENTILES:
                    getattr(step, name).CopyFrom(getattr(fallback, name))
                method = method.worst(Method("approximate", reason="no-sketch"))
        method = method.worst(_merge_trend(step, entries[step.step_name]))
        step.is_bottleneck = int(step.total.p95.ToNanoseconds()) > threshold_ns
    return base, method


def _merge_trend(
    step: analytics.StepDurationEntry, entries: Sequence[analytics.StepDurationEntry]
) -> Method:
    """Replace `step`'s trend points with sketch or pass-through merges where possible."""
    method = EXACT
    points: dict[int, list[tuple[analytics.StepDurationTrendPoint, int]]] = {}
    for entry in entries:
        for point in entry.trend:
            points.setdefault(int(point.timestamp.ToNanoseconds()), []).append(
                (point, int(entry.sample_count))
            )
    for out in step.trend:
        members = points.get(int(out.timestamp.ToNanoseconds()), [])
        summaries: list[Summary] = []
        for point, weight in members:
            sketch = usable_sketch(point.sketch if point.HasField("sketch") else None)
            if sketch is not None:
                if sketch.count:
                    summaries.append(Summary(sketch=sketch, percentiles=_bucket_values(point)))
            elif any(_bucket_values(point)):
                summaries.append(Summary(percentiles=_bucket_values(point), weight=weight))
        if len(summaries) <= 1:
            continue  # merge_step_duration already passed the one contributor through
        values, sketch, point_method = merge_summaries(summaries, "no-sketch")
        method = method.worst(point_method)
        out.p50.CopyFrom(duration_of(values[0]))
        out.p95.CopyFrom(duration_of(values[1]))
        out.p99.CopyFrom(duration_of(values[2]))
        if sketch is not None:
            out.sketch.CopyFrom(sketches.to_proto(sketch))
    return method


def _percentiles_of(sketch: DurationSketch) -> analytics.DurationPercentiles:
    p50, p95, p99 = (duration_of(sketch.quantile(percent)) for percent in PERCENTS)
    return analytics.DurationPercentiles(p50=p50, p95=p95, p99=p99)


# --- heatmap -------------------------------------------------------------------------


def merge_heatmap_summaries(
    responses: Mapping[str, analytics.GetStepHeatmapResponse],
) -> tuple[analytics.GetStepHeatmapResponse, Method]:
    """Counts add exactly; avg_duration is exact when every part sent a sketch.

    A cell's average covers its timed (finished) executions; the sketch counts
    exactly those, so the mean weighted by sketch counts is the mean of the union
    (to the nanosecond: each part's average is already rounded down). Without
    sketches the weights are all executions, running ones included: approximate.
    """
    merged = merge_heatmap(responses)
    groups: dict[tuple[str, int], list[analytics.HeatmapCell]] = {}
    for instance_id in sorted(responses):
        for cell in responses[instance_id].cells:
            key = (cell.step_name, int(cell.bucket_start.ToNanoseconds()))
            groups.setdefault(key, []).append(cell)
    method = EXACT
    for out in merged.cells:
        cells = groups.get((out.step_name, int(out.bucket_start.ToNanoseconds())), [])
        timed = [c for c in cells if c.total_executions or c.avg_duration.ToNanoseconds()]
        if len(timed) <= 1:
            continue
        found = [
            usable_sketch(c.duration_sketch if c.HasField("duration_sketch") else None)
            for c in timed
        ]
        present = [sketch for sketch in found if sketch is not None]
        if len(present) != len(found):
            method = method.worst(Method("approximate", reason="mean-weighted-by-all-executions"))
            continue
        counted = sum(sketch.count for sketch in present)
        if counted:
            total = sum(
                int(c.avg_duration.ToNanoseconds()) * sketch.count
                for c, sketch in zip(timed, present, strict=True)
            )
            out.avg_duration.CopyFrom(duration_of(total // counted))
        try:
            union = sketches.merge_all(present)
        except SketchError:
            continue
        if union is not None:
            out.duration_sketch.CopyFrom(sketches.to_proto(union))
    return merged, method
