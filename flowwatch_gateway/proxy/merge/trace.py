"""Merging one trace from every subsystem's part of it."""

from __future__ import annotations

from collections.abc import Mapping

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import (
    workflow_service_pb2 as wf,
)
from flowwatch_gateway.proxy.merge._protobuf import duration_of


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
            span.duration.CopyFrom(duration_of(duration))
        if start is None or earliest is None:
            span.ClearField("offset")
        else:
            span.offset.CopyFrom(duration_of(start - earliest))
            end = start + (duration or 0)
            latest_end = end if latest_end is None else max(latest_end, end)
        subsystem = span.subsystem_id or span.run.subsystem_id
        if subsystem:
            subsystems.add(subsystem)

    merged = wf.GetTraceResponse(trace_id=trace_id, subsystem_count=len(subsystems))
    merged.spans.extend(span for _, span in timed)
    if earliest is not None and latest_end is not None:
        merged.total_duration.CopyFrom(duration_of(latest_end - earliest))
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
