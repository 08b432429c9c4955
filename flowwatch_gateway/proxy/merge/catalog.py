"""Pure merges of several instances' answers into the one answer the UI sees.

Every function takes only the successful answers, keyed by instance id, and is
deterministic: instances are visited in sorted id order. Counts add exactly;
percentiles cannot be merged exactly from percentiles, so those merges also say
whether the result is approximate (see `merge_latency`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2 as analytics,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_pb2 as runs,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    types_pb2,
)
from flowwatch_gateway.gen.flowwatch.v1 import (
    workflow_service_pb2 as wf,
)
from flowwatch_gateway.proxy.paging import (
    NOT_ISSUED_MESSAGE,
    CursorError,
    seal_token,
    unseal_token,
)

T = TypeVar("T")

LIST_CURSOR_VERSION = "l1"
NO_ANSWER_ERROR = "no subsystem answered for this run"

META_INSTANCE = "gateway.instance"
META_STATE = "gateway.state"
META_LAST_HEARTBEAT = "gateway.last_heartbeat"
META_ENDPOINT = "gateway.endpoint"
META_STALE_SINCE = "gateway.stale_since"
META_ANSWERED = "gateway.answered"
META_REGISTRATION = "gateway.registration"

STATE_UNKNOWN = "unknown"


# --------------------------------------------------------------------------- workflows


def merge_workflows(
    responses: Mapping[str, wf.ListWorkflowsResponse],
) -> list[tuple[str, types_pb2.WorkflowDefinition]]:
    """Every instance's workflow definitions as (instance id, definition).

    The same workflow id served by several instances stays several entries (they
    are different deployments); ordered by (workflow id, instance id).
    """
    merged = [
        (instance_id, definition)
        for instance_id, response in responses.items()
        for definition in response.workflows
    ]
    merged.sort(key=lambda pair: (pair[1].id, pair[0]))
    return merged


def paginate_list(items: Sequence[T], cursor: str, limit: int) -> tuple[list[T], str, int]:
    """Offset paging of a small merged list: (page, next cursor or "", total).

    The cursor is opaque and versioned (`l1.<base64url offset>.<checksum>`), so a
    ListRuns cursor or a subsystem's own cursor is rejected with CursorError.
    `limit` follows the FlowWatch defaults (0 means 20, at most 100). An offset past
    the end (the list shrank) gives an empty last page rather than an error.
    """
    offset = 0
    if cursor:
        payload = unseal_token(cursor, LIST_CURSOR_VERSION)
        try:
            document = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CursorError(NOT_ISSUED_MESSAGE) from exc
        value = document.get("o") if isinstance(document, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CursorError(NOT_ISSUED_MESSAGE)
        offset = value
    size = effective_page_size(limit)
    page = list(items[offset : offset + size])
    end = offset + len(page)
    next_cursor = ""
    if end < len(items):
        next_cursor = seal_token(LIST_CURSOR_VERSION, json.dumps({"o": end}).encode())
    return page, next_cursor, len(items)


# --------------------------------------------------------------------------- traces


def merge_trace(trace_id: str, responses: Mapping[str, wf.GetTraceResponse]) -> wf.GetTraceResponse:
    """One trace from every instance's part of it.

    Spans are deduplicated by (subsystem id, span id, run id), first instance wins.
    They are ordered by run start, then span id; spans whose run has no start
    come last. `offset` is recomputed from the earliest start across all spans
    (a span without a start gets no offset: its instance's offset was relative to
    that instance's own earliest span). A span's `duration` is kept, or derived
    from its run (finished - started, else the run's duration). `total_duration`
    is latest end - earliest start, where a span without a known duration ends at
    its start. `subsystem_count` counts distinct span subsystem ids (the run's
    when the span has none).
    """
    spans: list[wf.TraceSpan] = []
    seen: set[tuple[str, str, str]] = set()
    for instance_id in sorted(responses):
        for span in responses[instance_id].spans:
            identity = (span.subsystem_id, span.span_id, span.run.id)
            if identity in seen:
                continue
            seen.add(identity)
            copy = wf.TraceSpan()
            copy.CopyFrom(span)
            spans.append(copy)

    timed = sorted(((_run_start_ns(span.run), span) for span in spans), key=_span_order)
    known_starts = [start for start, _ in timed if start is not None]
    earliest = min(known_starts) if known_starts else None

    latest_end: int | None = None
    subsystems: set[str] = set()
    for start, span in timed:
        duration = _span_duration_ns(span)
        if duration is not None and not span.HasField("duration"):
            span.duration.CopyFrom(_duration(duration))
        if start is None or earliest is None:
            span.ClearField("offset")
        else:
            span.offset.CopyFrom(_duration(start - earliest))
            end = start + (duration or 0)
            latest_end = end if latest_end is None else max(latest_end, end)
        subsystem = span.subsystem_id or span.run.subsystem_id
        if subsystem:
            subsystems.add(subsystem)

    merged = wf.GetTraceResponse(trace_id=trace_id, subsystem_count=len(subsystems))
    merged.spans.extend(span for _, span in timed)
    if earliest is not None and latest_end is not None:
        merged.total_duration.CopyFrom(_duration(latest_end - earliest))
    return merged


def _run_start_ns(run: types_pb2.Run) -> int | None:
    return run.started_at.ToNanoseconds() if run.HasField("started_at") else None


def _span_order(timed: tuple[int | None, wf.TraceSpan]) -> tuple[bool, int, str, str, str]:
    start, span = timed
    return (start is None, start or 0, span.span_id, span.subsystem_id, span.run.id)


def _span_duration_ns(span: wf.TraceSpan) -> int | None:
    if span.HasField("duration"):
        return int(span.duration.ToNanoseconds())
    run = span.run
    if run.HasField("started_at") and run.HasField("finished_at"):
        return int(run.finished_at.ToNanoseconds() - run.started_at.ToNanoseconds())
    if run.HasField("duration"):
        return int(run.duration.ToNanoseconds())
    return None


# --------------------------------------------------------------------------- subsystems


@dataclass(frozen=True)
class InstanceView:
    """The gateway registry's view of one registered instance (not what it reports)."""

    instance_id: str
    name: str
    description: str
    endpoint: str
    state: str
    last_heartbeat: datetime | None
    stale_since: datetime | None = None
    registered_at: datetime | None = None
    workflow_count: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    registration_id: str = ""  # "id#epoch": tells a re-registration from the one before


def merge_subsystems(
    responses: Mapping[str, wf.ListSubsystemsResponse], instances: Sequence[InstanceView]
) -> wf.ListSubsystemsResponse:
    """One summary per logical subsystem id, with the gateway's view added as metadata.

    Summaries come from the instances' own answers, grouped by subsystem id. When
    several instances report the same id, workflow_count, active_runs and
    failed_last_hour add up, and error_rate_last_hour is the maximum: the answers
    carry no denominators, so an exact combined rate cannot be computed and the
    worst one is the safe thing to show. Name, description and other fields come
    from the first instance (by id); metadata is the union, first instance wins.

    Metadata added: `gateway.instance`, `gateway.registration` (id#epoch),
    `gateway.state` (the registration's state:
    connected or stale), `gateway.answered` (whether the instance answered this
    call), `gateway.last_heartbeat` (RFC 3339), `gateway.endpoint` - comma-separated
    and aligned when several instances stand behind one subsystem - and
    `gateway.stale_since` when known. A registered instance that did not answer (or
    whose answer did not mention it) is never hidden: it joins the entry with its
    own id, or gets an entry built from the registry. Sorted by subsystem id.
    """
    views = {view.instance_id: view for view in instances}
    groups: dict[str, list[tuple[str, wf.SubsystemSummary]]] = {}
    for instance_id in sorted(responses):
        reported: set[str] = set()
        for summary in responses[instance_id].subsystems:
            subsystem_id = summary.subsystem.id
            if subsystem_id in reported:
                continue
            reported.add(subsystem_id)
            groups.setdefault(subsystem_id, []).append((instance_id, summary))

    covered = {instance_id for members in groups.values() for instance_id, _ in members}
    extra_members: dict[str, list[str]] = {}
    synthesized: dict[str, wf.SubsystemSummary] = {}
    for instance_id in sorted(views):
        if instance_id in covered:
            continue
        if instance_id in groups:
            extra_members.setdefault(instance_id, []).append(instance_id)
        else:
            synthesized[instance_id] = _summary_from_view(views[instance_id])

    merged = wf.ListSubsystemsResponse()
    for subsystem_id in sorted(set(groups) | set(synthesized)):
        if subsystem_id in groups:
            members = groups[subsystem_id]
            summary = _combine_summaries([summary for _, summary in members])
            member_ids = [instance_id for instance_id, _ in members]
            member_ids += extra_members.get(subsystem_id, [])
        else:
            summary = synthesized[subsystem_id]
            member_ids = [subsystem_id]
        _annotate(summary, member_ids, views, answered=set(responses))
        merged.subsystems.append(summary)
    return merged


def _combine_summaries(summaries: Sequence[wf.SubsystemSummary]) -> wf.SubsystemSummary:
    combined = wf.SubsystemSummary()
    combined.CopyFrom(summaries[0])
    for other in summaries[1:]:
        combined.workflow_count += other.workflow_count
        combined.active_runs += other.active_runs
        combined.failed_last_hour += other.failed_last_hour
        combined.error_rate_last_hour = max(
            combined.error_rate_last_hour, other.error_rate_last_hour
        )
        for key, value in other.subsystem.metadata.items():
            combined.subsystem.metadata.setdefault(key, value)
        if other.subsystem.HasField("created_at") and (
            not combined.subsystem.HasField("created_at")
            or other.subsystem.created_at.ToNanoseconds()
            < combined.subsystem.created_at.ToNanoseconds()
        ):
            combined.subsystem.created_at.CopyFrom(other.subsystem.created_at)
    return combined


def _summary_from_view(view: InstanceView) -> wf.SubsystemSummary:
    summary = wf.SubsystemSummary(
        subsystem=types_pb2.Subsystem(
            id=view.instance_id,
            name=view.name,
            description=view.description,
            metadata=dict(view.metadata),
        ),
        workflow_count=view.workflow_count,
    )
    if view.registered_at is not None:
        summary.subsystem.created_at.CopyFrom(_timestamp(view.registered_at))
    return summary


def _annotate(
    summary: wf.SubsystemSummary,
    member_ids: Sequence[str],
    views: Mapping[str, InstanceView],
    answered: set[str],
) -> None:
    states, answers, heartbeats, endpoints, stale_since = [], [], [], [], []
    registrations = []
    for instance_id in member_ids:
        view = views.get(instance_id)
        registrations.append(view.registration_id if view else "")
        states.append(view.state if view else STATE_UNKNOWN)
        answers.append("true" if instance_id in answered else "false")
        heartbeats.append(_rfc3339(view.last_heartbeat) if view and view.last_heartbeat else "")
        endpoints.append(view.endpoint if view else "")
        stale_since.append(_rfc3339(view.stale_since) if view and view.stale_since else "")
    metadata = summary.subsystem.metadata
    metadata[META_INSTANCE] = ",".join(member_ids)
    metadata[META_STATE] = ",".join(states)
    metadata[META_ANSWERED] = ",".join(answers)
    metadata[META_REGISTRATION] = ",".join(registrations)
    metadata[META_LAST_HEARTBEAT] = ",".join(heartbeats)
    metadata[META_ENDPOINT] = ",".join(endpoints)
    if any(stale_since):
        metadata[META_STALE_SINCE] = ",".join(stale_since)


def _rfc3339(moment: datetime) -> str:
    """UTC with a Z suffix; a naive datetime is taken to be UTC already."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = aware.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# --------------------------------------------------------------------------- capabilities


def merge_capabilities(caps: Sequence[types_pb2.Capabilities]) -> types_pb2.Capabilities:
    """What the UI may offer across all instances.

    Action flags (and streaming, analytics) are OR-ed: the gateway routes an
    action to the run's owner, so it is available if any instance supports it.
    Search: enabled if any is; engine = distinct engine names joined with ", ";
    scopes = sorted union; query_language, payload_indexed and log_indexed OR-ed;
    max_results and retention days the maximum.
    """
    merged = types_pb2.Capabilities()
    for flag in (
        "retry_run",
        "retry_from_step",
        "cancel_run",
        "pause_run",
        "resume_run",
        "skip_step",
        "streaming",
        "analytics",
    ):
        setattr(merged, flag, any(getattr(cap, flag) for cap in caps))
    searches = [cap.search for cap in caps if cap.HasField("search")]
    if not searches:
        return merged
    search = merged.search
    search.enabled = any(s.enabled for s in searches)
    search.engine = ", ".join(sorted({s.engine for s in searches if s.engine}))
    search.scopes.extend(sorted({scope for s in searches for scope in s.scopes}))
    search.query_language = any(s.query_language for s in searches)
    search.max_results = max(s.max_results for s in searches)
    search.payload_indexed = any(s.payload_indexed for s in searches)
    search.log_indexed = any(s.log_indexed for s in searches)
    search.log_retention_days = max(s.log_retention_days for s in searches)
    search.payload_retention_days = max(s.payload_retention_days for s in searches)
    return merged


# --------------------------------------------------------------------------- counts


TimestampKey = tuple[int, int]


def merge_throughput(
    responses: Mapping[str, analytics.GetThroughputResponse],
) -> analytics.GetThroughputResponse:
    """Per bucket timestamp, every count summed; buckets sorted ascending."""
    merged: dict[TimestampKey, analytics.ThroughputBucket] = {}
    for bucket in _all(responses, lambda response: response.buckets):
        target = merged.setdefault(
            _key(bucket.timestamp), analytics.ThroughputBucket(timestamp=bucket.timestamp)
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
            _key(bucket.timestamp), analytics.FailureRateBucket(timestamp=bucket.timestamp)
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
            timestamps.setdefault(_key(stamp), stamp)
        for cell in response.cells:
            groups.setdefault((cell.step_name, _key(cell.bucket_start)), []).append(cell)
            step_names.add(cell.step_name)
            timestamps.setdefault(_key(cell.bucket_start), cell.bucket_start)

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
            cell.avg_duration.CopyFrom(_duration(_weighted_mean(weighted)))
        merged.cells.append(cell)
    return merged


# --------------------------------------------------------------------------- percentiles


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
            key = _key(bucket.timestamp)
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
        p50, p95, p99 = (_duration(value) for value in outcome.values)
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
        merged.bottleneck_threshold.CopyFrom(_duration(threshold.values[0]))
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
            key = _key(point.timestamp)
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
        p50, p95, p99 = (_duration(value) for value in point_outcome.values)
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
        p50=_duration(values[0]), p95=_duration(values[1]), p99=_duration(values[2])
    )


# --------------------------------------------------------------------------- bulk actions


def merge_bulk_results(
    run_ids: Sequence[str], results: Mapping[str, runs.BulkActionResult]
) -> list[runs.BulkActionResult]:
    """One result per requested run id, in request order (repeated ids each get one).

    `results` maps run id to the owning instance's result; an id nobody answered
    for gets success=false with an error saying so.
    """
    merged: list[runs.BulkActionResult] = []
    for run_id in run_ids:
        result = runs.BulkActionResult()
        found = results.get(run_id)
        if found is None:
            result.run_id = run_id
            result.error = NO_ANSWER_ERROR
        else:
            result.CopyFrom(found)
            result.run_id = run_id
        merged.append(result)
    return merged


# --------------------------------------------------------------------------- helpers


ItemT = TypeVar("ItemT")
ResponseT = TypeVar("ResponseT")


def _all(
    responses: Mapping[str, ResponseT], items: Callable[[ResponseT], Iterable[ItemT]]
) -> Iterable[ItemT]:
    """Items of every response, instances in sorted id order."""
    for instance_id in sorted(responses):
        yield from items(responses[instance_id])


def _key(stamp: timestamp_pb2.Timestamp) -> TimestampKey:
    return (stamp.seconds, stamp.nanos)


def _duration(nanoseconds: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(nanoseconds)
    return duration


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    stamp.FromDatetime(aware)
    return stamp
