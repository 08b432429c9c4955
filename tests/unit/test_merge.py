"""Merges of per-instance answers: counts add exactly, percentiles stay in range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.merge.analytics import (
    merge_failure_rate,
    merge_heatmap,
    merge_latency,
    merge_step_duration,
    merge_throughput,
    throughput_weights,
)
from flowwatch_gateway.proxy.merge.catalog import (
    InstanceView,
    merge_capabilities,
    merge_subsystems,
    merge_workflows,
    paginate_list,
)
from flowwatch_gateway.proxy.merge.runs import NO_ANSWER_ERROR, merge_bulk_results
from flowwatch_gateway.proxy.merge.trace import merge_trace
from flowwatch_gateway.proxy.paging import (
    CursorError,
    ListRunsCursor,
    encode_cursor,
)

EPOCH = 1_700_000_000

KEY = b"cursor-key-for-tests"


def ts(offset_s: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=EPOCH + offset_s)


def dur(ms: int) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromMilliseconds(ms)
    return value


def ns(value: duration_pb2.Duration) -> int:
    return int(value.ToNanoseconds())


# --------------------------------------------------------------------------- workflows


def test_same_workflow_id_from_two_instances_stays_two_entries() -> None:
    merged = merge_workflows(
        {
            "b": wf.ListWorkflowsResponse(
                workflows=[types_pb2.WorkflowDefinition(id="orders", subsystem_id="b")]
            ),
            "a": wf.ListWorkflowsResponse(
                workflows=[
                    types_pb2.WorkflowDefinition(id="payments"),
                    types_pb2.WorkflowDefinition(id="orders", subsystem_id="a"),
                ]
            ),
        }
    )
    assert [(instance, d.id) for instance, d in merged] == [
        ("a", "orders"),
        ("b", "orders"),
        ("a", "payments"),
    ]


@given(
    size=st.integers(0, 250),
    limits=st.lists(st.integers(-3, 150), min_size=1, max_size=5),
)
def test_paginate_list_visits_every_item_once(size: int, limits: list[int]) -> None:
    items = list(range(size))
    collected: list[int] = []
    cursor = ""
    for call in range(size + 2):
        page, cursor, total = paginate_list(items, cursor, limits[call % len(limits)], secret=KEY)
        assert total == size
        collected.extend(page)
        if not cursor:
            break
        assert page
    assert collected == items


def test_paginate_list_defaults_and_shrunk_list() -> None:
    items = list(range(50))
    page, cursor, _ = paginate_list(items, "", 0, secret=KEY)
    assert page == list(range(20))
    page, cursor_after_shrink, total = paginate_list(items[:10], cursor, 5, secret=KEY)
    assert (page, cursor_after_shrink, total) == ([], "", 10)


def test_paginate_list_rejects_cursors_it_did_not_issue() -> None:
    list_runs_cursor = encode_cursor(ListRunsCursor("q", (1, 1, "r"), 0), secret=KEY)
    _, good, _ = paginate_list(list(range(30)), "", 10, secret=KEY)
    edited = good[:-1] + ("A" if good[-1] != "A" else "B")
    for bad in ["20", "garbage", list_runs_cursor, edited]:
        with pytest.raises(CursorError):
            paginate_list(list(range(30)), bad, 10, secret=KEY)
    with pytest.raises(CursorError):  # signed by another gateway
        paginate_list(list(range(30)), good, 10, secret=b"another key")


# --------------------------------------------------------------------------- traces


def span(
    span_id: str,
    subsystem: str,
    run_id: str,
    start_s: int | None,
    *,
    duration_ms: int | None = None,
    finish_s: int | None = None,
    offset_ms: int = 0,
) -> wf.TraceSpan:
    run = types_pb2.Run(id=run_id, subsystem_id=subsystem)
    if start_s is not None:
        run.started_at.CopyFrom(ts(start_s))
    if finish_s is not None:
        run.finished_at.CopyFrom(ts(finish_s))
    result = wf.TraceSpan(span_id=span_id, subsystem_id=subsystem, run=run, offset=dur(offset_ms))
    if duration_ms is not None:
        result.duration.CopyFrom(dur(duration_ms))
    return result


def test_trace_spans_merge_dedupe_and_get_offsets_from_the_earliest_start() -> None:
    shared = span("s2", "billing", "r2", 10, duration_ms=4_000, offset_ms=0)
    merged = merge_trace(
        "t1",
        {
            "orders": wf.GetTraceResponse(
                trace_id="t1",
                spans=[
                    span("s1", "orders", "r1", 5, finish_s=20, offset_ms=0),
                    span("s9", "orders", "r9", None, offset_ms=777),
                ],
            ),
            "billing": wf.GetTraceResponse(trace_id="t1", spans=[shared, shared]),
            "audit": wf.GetTraceResponse(
                trace_id="t1", spans=[span("s3", "", "r3", 30, duration_ms=2_500)]
            ),
        },
    )
    assert merged.trace_id == "t1"
    assert [s.span_id for s in merged.spans] == ["s1", "s2", "s3", "s9"]
    assert [ns(s.offset) // 1_000_000 for s in merged.spans[:3]] == [0, 5_000, 25_000]
    assert not merged.spans[3].HasField("offset")
    assert ns(merged.spans[0].duration) == 15 * 10**9  # derived from the run
    assert ns(merged.spans[1].duration) == 4 * 10**9  # kept
    assert ns(merged.total_duration) == (32_500 - 5_000) * 10**6
    assert merged.subsystem_count == 2  # orders, billing; s3 has no subsystem anywhere


# --------------------------------------------------------------------------- subsystems


def summary(
    subsystem_id: str, workflows: int, active: int, failed: int, rate: float
) -> wf.SubsystemSummary:
    return wf.SubsystemSummary(
        subsystem=types_pb2.Subsystem(id=subsystem_id, name=subsystem_id.title()),
        workflow_count=workflows,
        active_runs=active,
        failed_last_hour=failed,
        error_rate_last_hour=rate,
    )


def view(instance_id: str, state: str = "connected", **extra: object) -> InstanceView:
    beat = datetime(2026, 11, 27, 12, 0, 0, 250_000, tzinfo=UTC)
    return InstanceView(
        instance_id=instance_id,
        name=f"{instance_id} name",
        description=f"{instance_id} description",
        endpoint=f"http://{instance_id}:8080",
        state=state,
        last_heartbeat=beat,
        **extra,  # type: ignore[arg-type]
    )


def test_subsystems_merge_counts_and_never_hide_silent_instances() -> None:
    stale_since = datetime(2026, 11, 27, 12, 0, 5, tzinfo=UTC)
    merged = merge_subsystems(
        {
            "orders-a": wf.ListSubsystemsResponse(subsystems=[summary("orders", 3, 4, 1, 0.1)]),
            "orders-b": wf.ListSubsystemsResponse(subsystems=[summary("orders", 2, 6, 5, 0.4)]),
            "billing": wf.ListSubsystemsResponse(subsystems=[summary("billing", 1, 0, 0, 0.0)]),
        },
        [
            view("orders-a"),
            view("orders-b"),
            view("billing"),
            view("shipping", "stale", stale_since=stale_since, workflow_count=7),
            view("audit", "connected", registered_at=stale_since),
        ],
    )
    by_id = {s.subsystem.id: s for s in merged.subsystems}
    assert [s.subsystem.id for s in merged.subsystems] == sorted(by_id)
    assert set(by_id) == {"orders", "billing", "shipping", "audit"}

    orders = by_id["orders"]
    assert (orders.workflow_count, orders.active_runs, orders.failed_last_hour) == (5, 10, 6)
    assert orders.error_rate_last_hour == 0.4
    meta = orders.subsystem.metadata
    assert meta["gateway.instance"] == "orders-a,orders-b"
    assert meta["gateway.state"] == "connected,connected"
    assert meta["gateway.endpoint"] == "http://orders-a:8080,http://orders-b:8080"
    assert meta["gateway.last_heartbeat"].split(",")[0] == "2026-11-27T12:00:00.250Z"

    shipping = by_id["shipping"]
    # The stock UI calls a card healthy from its failure count alone: the name says it.
    assert shipping.subsystem.name == "shipping name — unreachable"
    assert shipping.workflow_count == 7
    assert shipping.subsystem.metadata["gateway.state"] == "stale"
    assert shipping.subsystem.metadata["gateway.stale_since"] == "2026-11-27T12:00:05.000Z"

    audit = by_id["audit"]
    assert audit.subsystem.metadata["gateway.state"] == "connected"
    assert audit.subsystem.metadata["gateway.answered"] == "false"
    assert audit.subsystem.created_at.ToDatetime(tzinfo=UTC) == stale_since


def test_silent_instance_joins_the_entry_others_report_for_its_id() -> None:
    merged = merge_subsystems(
        {"gateway-side": wf.ListSubsystemsResponse(subsystems=[summary("orders", 1, 1, 0, 0.0)])},
        [view("gateway-side"), view("orders")],
    )
    assert len(merged.subsystems) == 1
    meta = merged.subsystems[0].subsystem.metadata
    assert meta["gateway.instance"] == "gateway-side,orders"
    assert meta["gateway.state"] == "connected,connected"
    assert meta["gateway.answered"] == "true,false"


# --------------------------------------------------------------------------- capabilities


def test_capabilities_are_the_union() -> None:
    merged = merge_capabilities(
        [
            types_pb2.Capabilities(
                retry_run=True,
                search=types_pb2.SearchCapabilities(
                    enabled=False, engine="sqlite", scopes=["runs"], max_results=50
                ),
            ),
            types_pb2.Capabilities(
                cancel_run=True,
                search=types_pb2.SearchCapabilities(
                    enabled=True,
                    engine="opensearch",
                    scopes=["logs", "runs"],
                    max_results=200,
                    log_indexed=True,
                    log_retention_days=30,
                    payload_retention_days=7,
                ),
            ),
            types_pb2.Capabilities(),
        ]
    )
    assert merged.retry_run and merged.cancel_run
    assert not merged.pause_run
    assert merged.search.enabled
    assert merged.search.engine == "opensearch, sqlite"
    assert list(merged.search.scopes) == ["logs", "runs"]
    assert merged.search.max_results == 200
    assert merged.search.log_indexed and not merged.search.payload_indexed
    assert (merged.search.log_retention_days, merged.search.payload_retention_days) == (30, 7)
    assert not merge_capabilities([]).HasField("search")


# --------------------------------------------------------------------------- counts

bucket_offsets = st.sampled_from([0, 3600, 7200, 10800])
counts = st.integers(0, 1000)


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.tuples(bucket_offsets, counts, counts, counts, counts), max_size=4),
        max_size=3,
    )
)
def test_throughput_counts_sum_exactly(
    data: dict[str, list[tuple[int, int, int, int, int]]],
) -> None:
    responses = {
        instance: analytics.GetThroughputResponse(
            buckets=[
                analytics.ThroughputBucket(
                    timestamp=ts(offset),
                    succeeded=ok,
                    failed=bad,
                    running=run,
                    canceled=cancel,
                    total=ok + bad + run + cancel,
                )
                for offset, ok, bad, run, cancel in rows
            ]
        )
        for instance, rows in data.items()
    }
    merged = merge_throughput(responses)
    stamps = [bucket.timestamp.seconds for bucket in merged.buckets]
    assert stamps == sorted(set(stamps))
    for bucket in merged.buckets:
        offset = bucket.timestamp.seconds - EPOCH
        rows = [row for rows in data.values() for row in rows if row[0] == offset]
        assert bucket.succeeded == sum(row[1] for row in rows)
        assert bucket.failed == sum(row[2] for row in rows)
        assert bucket.canceled == sum(row[4] for row in rows)
        assert bucket.total == sum(sum(row[1:]) for row in rows)
    weights = throughput_weights(responses)
    for instance, rows in data.items():
        for offset in {row[0] for row in rows}:
            expected = sum(sum(row[1:]) for row in rows if row[0] == offset)
            assert weights[instance][EPOCH + offset] == expected


def test_failure_rate_is_recomputed_from_summed_counts() -> None:
    merged = merge_failure_rate(
        {
            "a": analytics.GetFailureRateResponse(
                buckets=[
                    analytics.FailureRateBucket(
                        timestamp=ts(0), rate=0.5, total_runs=2, failed_runs=1
                    ),
                    analytics.FailureRateBucket(timestamp=ts(60), rate=0.0),
                ]
            ),
            "b": analytics.GetFailureRateResponse(
                buckets=[
                    analytics.FailureRateBucket(
                        timestamp=ts(0), rate=0.125, total_runs=8, failed_runs=1
                    )
                ]
            ),
        }
    )
    assert [(b.total_runs, b.failed_runs, b.rate) for b in merged.buckets] == [
        (10, 2, 0.2),
        (0, 0, 0.0),
    ]


def test_heatmap_cells_add_and_average_duration_is_execution_weighted() -> None:
    merged = merge_heatmap(
        {
            "a": analytics.GetStepHeatmapResponse(
                cells=[
                    analytics.HeatmapCell(
                        step_name="charge",
                        bucket_start=ts(0),
                        total_executions=1,
                        failed_executions=1,
                        failure_rate=1.0,
                        avg_duration=dur(100),
                    ),
                    analytics.HeatmapCell(
                        step_name="ship",
                        bucket_start=ts(3600),
                        total_executions=2,
                        avg_duration=dur(40),
                    ),
                ],
                step_names=["charge", "ship"],
                bucket_timestamps=[ts(0), ts(3600)],
            ),
            "b": analytics.GetStepHeatmapResponse(
                cells=[
                    analytics.HeatmapCell(
                        step_name="charge",
                        bucket_start=ts(0),
                        total_executions=3,
                        failed_executions=0,
                        avg_duration=dur(20),
                    )
                ],
                step_names=["audit", "charge"],
                bucket_timestamps=[ts(-3600), ts(0)],
            ),
        }
    )
    assert list(merged.step_names) == ["audit", "charge", "ship"]
    assert [t.seconds - EPOCH for t in merged.bucket_timestamps] == [-3600, 0, 3600]
    charge, ship = merged.cells
    assert (charge.total_executions, charge.failed_executions, charge.failure_rate) == (4, 1, 0.25)
    assert ns(charge.avg_duration) == 40 * 10**6  # (100*1 + 20*3) / 4
    assert ns(ship.avg_duration) == 40 * 10**6


# --------------------------------------------------------------------------- percentiles

percentile_triples = st.one_of(
    st.just((0, 0, 0)),
    st.lists(st.integers(1, 10**12), min_size=3, max_size=3).map(
        lambda values: tuple(sorted(values))
    ),
)
latency_data = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.dictionaries(bucket_offsets, st.tuples(percentile_triples, st.integers(0, 50))),
    min_size=1,
    max_size=4,
)


def latency_response(
    buckets: dict[int, tuple[tuple[int, ...], int]],
) -> analytics.GetLatencyResponse:
    response = analytics.GetLatencyResponse()
    for offset, (values, _) in sorted(buckets.items()):
        bucket = response.buckets.add(timestamp=ts(offset))
        for name, value in zip(("p50", "p95", "p99"), values, strict=True):
            getattr(bucket, name).FromNanoseconds(value)
    return response


@given(data=latency_data, with_weights=st.booleans())
def test_merged_latency_stays_within_the_contributing_values(
    data: dict[str, dict[int, tuple[tuple[int, ...], int]]], with_weights: bool
) -> None:
    responses = {instance: latency_response(buckets) for instance, buckets in data.items()}
    weights = (
        {
            instance: {EPOCH + offset: weight for offset, (_, weight) in buckets.items()}
            for instance, buckets in data.items()
        }
        if with_weights
        else None
    )
    merged, approximate = merge_latency(responses, weights)
    assert [b.timestamp.seconds - EPOCH for b in merged.buckets] == sorted(
        {offset for buckets in data.values() for offset in buckets}
    )
    any_mixed = False
    for bucket in merged.buckets:
        offset = bucket.timestamp.seconds - EPOCH
        contributing = [
            buckets[offset][0]
            for buckets in data.values()
            if offset in buckets and any(buckets[offset][0])
        ]
        result = (ns(bucket.p50), ns(bucket.p95), ns(bucket.p99))
        assert result[0] <= result[1] <= result[2]
        if not contributing:
            assert result == (0, 0, 0)
            continue
        any_mixed = any_mixed or len(contributing) > 1
        for position in range(3):
            values = [triple[position] for triple in contributing]
            assert min(values) <= result[position] <= max(values)
    if not any_mixed:
        assert not approximate


@given(buckets=st.dictionaries(bucket_offsets, st.tuples(percentile_triples, st.integers(0, 9))))
def test_single_instance_latency_passes_through_unchanged(
    buckets: dict[int, tuple[tuple[int, ...], int]],
) -> None:
    response = latency_response(buckets)
    merged, approximate = merge_latency({"only": response}, None)
    assert merged == response
    assert not approximate


def test_latency_uses_run_count_weights_and_ignores_empty_buckets() -> None:
    a = latency_response({0: ((100, 200, 300), 0), 60: ((100, 100, 100), 0)})
    b = latency_response({0: ((400, 500, 600), 0), 60: ((0, 0, 0), 0)})
    c = latency_response({0: ((900, 900, 900), 0)})
    merged, approximate = merge_latency(
        {"a": a, "b": b, "c": c},
        {"a": {EPOCH: 3, EPOCH + 60: 5}, "b": {EPOCH: 1}, "c": {EPOCH: 0}},
    )
    assert approximate
    first, second = merged.buckets
    # c had no runs in the bucket; a and b weigh 3:1.
    assert (ns(first.p50), ns(first.p95), ns(first.p99)) == (175, 275, 375)
    # b's all-zero bucket means no data: a's bucket passes through exactly.
    assert second == a.buckets[1]
    unweighted, _ = merge_latency({"a": a, "b": b, "c": c})
    assert ns(unweighted.buckets[0].p50) == 467  # (100 + 400 + 900) / 3, rounded


def step_entry(
    name: str, samples: int, base: int, trend: dict[int, int] | None = None
) -> analytics.StepDurationEntry:
    entry = analytics.StepDurationEntry(step_name=name, sample_count=samples)
    for scale, part in ((1, entry.queue_wait), (2, entry.execution), (3, entry.total)):
        part.p50.FromNanoseconds(base * scale)
        part.p95.FromNanoseconds(base * scale * 2)
        part.p99.FromNanoseconds(base * scale * 3)
    for offset, value in sorted((trend or {}).items()):
        point = entry.trend.add(timestamp=ts(offset))
        point.p50.FromNanoseconds(value)
        point.p95.FromNanoseconds(value * 2)
        point.p99.FromNanoseconds(value * 3)
    return entry


step_data = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.tuples(
        st.dictionaries(
            st.sampled_from(["fetch", "charge", "ship"]),
            st.tuples(
                st.integers(0, 500),
                st.integers(1, 10**9),
                st.dictionaries(bucket_offsets, st.integers(1, 10**9), max_size=3),
            ),
        ),
        st.integers(0, 10**10),
    ),
    min_size=1,
    max_size=3,
)


@given(data=step_data)
def test_step_duration_merge_sums_counts_and_stays_in_range(
    data: dict[str, tuple[dict[str, tuple[int, int, dict[int, int]]], int]],
) -> None:
    responses = {
        instance: analytics.GetStepDurationResponse(
            steps=[
                step_entry(name, samples, base, trend)
                for name, (samples, base, trend) in steps.items()
            ],
            bottleneck_threshold=duration_pb2.Duration(
                seconds=threshold // 10**9, nanos=threshold % 10**9
            ),
        )
        for instance, (steps, threshold) in data.items()
    }
    merged, approximate = merge_step_duration(responses)
    if len(responses) == 1:
        assert merged == next(iter(responses.values()))
        assert not approximate
        return

    thresholds = [threshold for _, threshold in data.values() if threshold]
    threshold_ns = ns(merged.bottleneck_threshold)
    if thresholds:
        assert min(thresholds) <= threshold_ns <= max(thresholds)
    else:
        assert threshold_ns == 0
    assert {step.step_name for step in merged.steps} == {
        name for steps, _ in data.values() for name in steps
    }
    for step in merged.steps:
        reports = [steps[step.step_name] for steps, _ in data.values() if step.step_name in steps]
        assert step.sample_count == sum(samples for samples, _, _ in reports)
        with_samples = [base for samples, base, _ in reports if samples] or [
            base for _, base, _ in reports
        ]
        assert min(with_samples) * 3 <= ns(step.total.p50) <= max(with_samples) * 3
        assert min(with_samples) * 2 <= ns(step.execution.p95) <= max(with_samples) * 4
        assert step.is_bottleneck == (ns(step.total.p95) > threshold_ns)
        for point in step.trend:
            values = [
                trend[point.timestamp.seconds - EPOCH]
                for _, _, trend in reports
                if point.timestamp.seconds - EPOCH in trend
            ]
            assert min(values) <= ns(point.p50) <= max(values)


def test_step_present_in_one_instance_keeps_its_exact_values() -> None:
    a = analytics.GetStepDurationResponse(
        steps=[step_entry("charge", 10, 1000, {0: 70})], bottleneck_threshold=dur(0)
    )
    a.bottleneck_threshold.FromNanoseconds(5000)
    b = analytics.GetStepDurationResponse(steps=[step_entry("ship", 30, 3000)])
    b.bottleneck_threshold.FromNanoseconds(9000)
    merged, approximate = merge_step_duration({"a": a, "b": b})
    assert approximate  # the thresholds had to be averaged
    assert ns(merged.bottleneck_threshold) == 8000  # (5000*10 + 9000*30) / 40
    charge, ship = merged.steps
    expected = step_entry("charge", 10, 1000, {0: 70})
    assert (charge.total, charge.trend[0]) == (expected.total, expected.trend[0])
    assert not charge.is_bottleneck  # total.p95 = 6000 <= 8000
    assert ship.is_bottleneck  # total.p95 = 18000 > 8000


# --------------------------------------------------------------------------- bulk


def test_bulk_results_follow_request_order_including_repeats_and_gaps() -> None:
    merged = merge_bulk_results(
        ["r1", "r2", "r1", "r3"],
        {
            "r1": runs.BulkActionResult(run_id="r1", success=True, new_run_id="r1-retry"),
            "r3": runs.BulkActionResult(run_id="r3", success=False, error="already finished"),
        },
    )
    assert [(r.run_id, r.success, r.error, r.new_run_id) for r in merged] == [
        ("r1", True, "", "r1-retry"),
        ("r2", False, NO_ANSWER_ERROR, ""),
        ("r1", True, "", "r1-retry"),
        ("r3", False, "already finished", ""),
    ]
    assert merged[0] is not merged[2]


def test_a_silent_instance_keeps_its_last_known_stats_marked_with_their_age() -> None:
    seen_at = datetime(2026, 11, 27, 11, 59, tzinfo=UTC)
    last = wf.ListSubsystemsResponse(
        subsystems=[summary("payments", workflows=3, active=4, failed=2, rate=0.5)]
    )
    views = [
        view("payments", "stale", stale_since=datetime(2026, 11, 27, 12, tzinfo=UTC)),
        view("orders"),
    ]
    fresh = {"orders": wf.ListSubsystemsResponse(subsystems=[summary("orders", 1, 0, 0, 0.0)])}

    remembered = {"payments": (seen_at, last), "orders": (seen_at, last)}
    merged = merge_subsystems(fresh, views, remembered)

    by_id = {s.subsystem.id: s for s in merged.subsystems}
    payments = by_id["payments"]
    assert (payments.active_runs, payments.failed_last_hour) == (4, 2)  # not zeroed
    assert payments.subsystem.name == "Payments — unreachable"
    assert payments.subsystem.metadata["gateway.stats_as_of"] == "2026-11-27T11:59:00.000Z"
    assert payments.subsystem.metadata["gateway.answered"] == "false"
    orders = by_id["orders"]  # answered now: the fresh answer wins over the remembered one
    assert orders.subsystem.name == "Orders"
    assert "gateway.stats_as_of" not in orders.subsystem.metadata


def test_heartbeats_in_other_time_zones_are_reported_in_utc() -> None:
    local = datetime(2026, 1, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    merged = merge_subsystems({}, [InstanceView("x", "X", "", "", "stale", local)])
    assert merged.subsystems[0].subsystem.metadata["gateway.last_heartbeat"] == (
        "2026-01-01T14:00:00.000Z"
    )
