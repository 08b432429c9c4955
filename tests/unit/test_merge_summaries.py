"""Percentile merges from exact values and sketches, against a brute-force union."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flowwatch_gateway.api import sketch as sketches
from flowwatch_gateway.api.sketch import DurationSketch, nearest_rank
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.proxy.merge._protobuf import duration_of, timestamp_from_ns
from flowwatch_gateway.proxy.merge.summaries import (
    latency_listing_candidates,
    merge_heatmap_summaries,
    merge_latency_summaries,
    merge_step_duration_summaries,
)

HOUR = 3600 * 10**9
T0 = 1_740_823_200 * 10**9  # an hour boundary

bucket_values = st.lists(st.integers(min_value=1, max_value=10**12), max_size=40)
# subsystem -> bucket index -> durations
layouts = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.dictionaries(st.integers(min_value=0, max_value=3), bucket_values, max_size=4),
    min_size=1,
    max_size=4,
)


def latency_answer(
    buckets: dict[int, list[int]], *, sketched: bool
) -> analytics.GetLatencyResponse:
    response = analytics.GetLatencyResponse()
    for index in range(4):
        values = sorted(buckets.get(index, []))
        bucket = response.buckets.add(
            timestamp=timestamp_from_ns(T0 + index * HOUR),
            p50=duration_of(nearest_rank(values, 50)),
            p95=duration_of(nearest_rank(values, 95)),
            p99=duration_of(nearest_rank(values, 99)),
        )
        if sketched:
            bucket.sketch.CopyFrom(sketches.to_proto(DurationSketch.of(values)))
    return response


def ns(value: object) -> int:
    return int(value.ToNanoseconds())  # type: ignore[attr-defined]


@settings(max_examples=40, deadline=None)
@given(layouts)
def test_exact_mode_equals_the_brute_force_union(layout: dict[str, dict[int, list[int]]]) -> None:
    responses = {iid: latency_answer(b, sketched=False) for iid, b in layout.items()}
    listed = {
        iid: {T0 + i * HOUR: sorted(v) for i, v in buckets.items() if v}
        for iid, buckets in layout.items()
    }
    merged, method = merge_latency_summaries(responses, None, listed)
    assert method.header() == "exact"
    for index, bucket in enumerate(merged.buckets):
        union = sorted(v for buckets in layout.values() for v in buckets.get(index, []))
        got = (ns(bucket.p50), ns(bucket.p95), ns(bucket.p99))
        assert got == tuple(nearest_rank(union, p) for p in (50, 95, 99))


@settings(max_examples=40, deadline=None)
@given(layouts, st.data())
def test_sketches_and_listed_values_mix_within_the_bound(
    layout: dict[str, dict[int, list[int]]], data: st.DataObject
) -> None:
    sketched = {iid: data.draw(st.booleans()) for iid in layout}
    responses = {iid: latency_answer(b, sketched=sketched[iid]) for iid, b in layout.items()}
    wanted = latency_listing_candidates(responses)
    assert not wanted & {iid for iid, s in sketched.items() if s}
    listed = {
        iid: {T0 + i * HOUR: sorted(v) for i, v in layout[iid].items() if v} for iid in wanted
    }
    merged, method = merge_latency_summaries(responses, None, listed)
    assert method.kind in ("exact", "sketch")
    for index, bucket in enumerate(merged.buckets):
        union = sorted(v for buckets in layout.values() for v in buckets.get(index, []))
        for percent, value in zip((50, 95, 99), (bucket.p50, bucket.p95, bucket.p99), strict=True):
            exact = nearest_rank(union, percent)
            assert abs(ns(value) - exact) <= 0.01 * exact * (1 + 1e-9) + 0.5


def test_without_sketches_or_listing_the_answer_says_approximate_and_why() -> None:
    responses = {
        "a": latency_answer({0: [10, 20, 30]}, sketched=False),
        "b": latency_answer({0: [1000, 2000]}, sketched=True),
    }
    assert latency_listing_candidates(responses) == {"a"}
    merged, method = merge_latency_summaries(responses, None, {}, "exact-budget-exceeded")
    assert method.header() == "approximate;reason=exact-budget-exceeded"
    assert 30 <= ns(merged.buckets[0].p95) <= 2000


def test_a_bucket_only_one_subsystem_has_passes_through() -> None:
    responses = {
        "a": latency_answer({0: [10, 20, 30]}, sketched=False),
        "b": latency_answer({1: [1000, 2000]}, sketched=False),
    }
    assert latency_listing_candidates(responses) == set()
    merged, method = merge_latency_summaries(responses)
    assert method.header() == "exact"
    assert merged.buckets[0] == responses["a"].buckets[0]
    assert merged.buckets[1] == responses["b"].buckets[1]


def step_answer(
    values: dict[str, list[int]], *, sketched: bool
) -> analytics.GetStepDurationResponse:
    response = analytics.GetStepDurationResponse(bottleneck_threshold=duration_of(10**9))
    for name, durations in values.items():
        ordered = sorted(durations)
        percentiles = analytics.DurationPercentiles(
            p50=duration_of(nearest_rank(ordered, 50)),
            p95=duration_of(nearest_rank(ordered, 95)),
            p99=duration_of(nearest_rank(ordered, 99)),
        )
        entry = response.steps.add(
            step_name=name,
            queue_wait=analytics.DurationPercentiles(),
            execution=percentiles,
            total=percentiles,
            sample_count=len(ordered),
        )
        if sketched:
            entry.queue_wait_sketch.CopyFrom(
                sketches.to_proto(DurationSketch.of([0] * len(ordered)))
            )
            entry.execution_sketch.CopyFrom(sketches.to_proto(DurationSketch.of(ordered)))
            entry.total_sketch.CopyFrom(sketches.to_proto(DurationSketch.of(ordered)))
    return response


def test_step_durations_merge_by_sketch_when_everyone_sent_one() -> None:
    fast = list(range(1, 101))
    slow = [v * 1000 for v in range(1, 11)]
    merged, method = merge_step_duration_summaries(
        {
            "a": step_answer({"pay": fast}, sketched=True),
            "b": step_answer({"pay": slow}, sketched=True),
        }
    )
    assert method.header() == "sketch;rel-err=0.01"
    union = sorted(fast + slow)
    (step,) = merged.steps
    assert step.sample_count == 110
    for percent, value in ((50, step.total.p50), (95, step.total.p95), (99, step.total.p99)):
        exact = nearest_rank(union, percent)
        assert abs(ns(value) - exact) <= 0.01 * exact + 0.5

    _, without = merge_step_duration_summaries(
        {
            "a": step_answer({"pay": fast}, sketched=True),
            "b": step_answer({"pay": slow}, sketched=False),
        }
    )
    assert without.header() == "approximate;reason=no-sketch"


def test_heatmap_average_is_exact_with_sketches_even_with_running_executions() -> None:
    def cell(total: int, timed: list[int], sketched: bool) -> analytics.GetStepHeatmapResponse:
        response = analytics.GetStepHeatmapResponse(step_names=["s"])
        c = response.cells.add(
            step_name="s",
            bucket_start=timestamp_from_ns(T0),
            total_executions=total,
            avg_duration=duration_of(sum(timed) // len(timed)),
        )
        if sketched:
            c.duration_sketch.CopyFrom(sketches.to_proto(DurationSketch.of(timed)))
        return response

    # b has 8 executions but only 2 finished: weighting by executions would be wrong.
    answers = {"a": cell(2, [100, 300], True), "b": cell(8, [1000, 1000], True)}
    merged, method = merge_heatmap_summaries(answers)
    assert method.header() == "exact"
    assert ns(merged.cells[0].avg_duration) == 600  # (200*2 + 1000*2) / 4
    assert merged.cells[0].duration_sketch.count == 4

    answers["b"] = cell(8, [1000, 1000], False)
    _, method = merge_heatmap_summaries(answers)
    assert method.kind == "approximate"
