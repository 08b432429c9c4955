"""The duration sketch: merges that lose nothing, quantiles within the stated bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowwatch_gateway.api import sketch as sketches
from flowwatch_gateway.api.sketch import DurationSketch, SketchError, nearest_rank
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics

ACCURACY = 0.01
PERCENTS = (0, 1, 25, 50, 90, 95, 99, 99.9, 100)

# Durations from a nanosecond to ~11 days, plus zero; the log-uniform and
# heavy-tailed draws put the data on very different scales within one sketch.
log_uniform = st.floats(min_value=0.0, max_value=15.0).map(lambda e: int(10**e))
heavy_tail = st.floats(min_value=1e-6, max_value=1.0).map(lambda u: int(1e6 / u**1.5))
durations = st.one_of(
    st.integers(min_value=0, max_value=10**15),
    log_uniform,
    heavy_tail,
    st.sampled_from([0, 1, 2, 3, 1_000_000_000]),
)
samples = st.lists(durations, min_size=1, max_size=300)


def state(sketch: DurationSketch) -> tuple[object, ...]:
    return (
        sketch.relative_accuracy,
        {k: v for k, v in sketch.bins.items() if v},
        sketch.zero_count,
        sketch.count,
        sketch.min_ns,
        sketch.max_ns,
    )


def within_bound(estimate: int, exact: int, accuracy: float) -> bool:
    # Relative accuracy, plus half a nanosecond of rounding, plus float slack at bin edges.
    return abs(estimate - exact) <= accuracy * exact * (1 + 1e-9) + 0.5


@settings(max_examples=60, deadline=None)
@given(samples, st.sampled_from(PERCENTS))
def test_quantile_is_within_the_relative_bound_of_exact_nearest_rank(
    values: list[int], percent: float
) -> None:
    sketch = DurationSketch.of(values, ACCURACY)
    exact = nearest_rank(sorted(values), percent)
    assert within_bound(sketch.quantile(percent), exact, ACCURACY)


@settings(max_examples=40, deadline=None)
@given(st.lists(samples, min_size=2, max_size=5), st.sampled_from(PERCENTS))
def test_merged_parts_answer_like_the_union(parts: list[list[int]], percent: float) -> None:
    merged = sketches.merge_all(DurationSketch.of(part) for part in parts)
    union = sorted(value for part in parts for value in part)
    assert merged is not None
    assert state(merged) == state(DurationSketch.of(union))
    assert within_bound(merged.quantile(percent), nearest_rank(union, percent), ACCURACY)


@settings(max_examples=40, deadline=None)
@given(samples, samples, samples)
def test_merge_is_commutative_and_associative(a: list[int], b: list[int], c: list[int]) -> None:
    x, y, z = (DurationSketch.of(values) for values in (a, b, c))

    def merged(*parts: DurationSketch) -> DurationSketch:
        result = sketches.merge_all(parts)
        assert result is not None
        return result

    assert state(merged(x, y)) == state(merged(y, x))
    assert state(merged(merged(x, y), z)) == state(merged(x, merged(y, z)))
    assert state(x) == state(DurationSketch.of(a))  # inputs unchanged


@settings(max_examples=30, deadline=None)
@given(samples)
def test_wire_form_round_trips(values: list[int]) -> None:
    sketch = DurationSketch.of(values)
    wire = analytics.DurationSketch.FromString(sketches.to_proto(sketch).SerializeToString())
    assert state(sketches.from_proto(wire)) == state(sketch)


def test_empty_sketch_reads_zero_and_merges_as_identity() -> None:
    empty = DurationSketch()
    assert empty.quantile(99) == 0
    full = DurationSketch.of([5, 7, 9])
    merged = sketches.merge_all([empty, full, empty])
    assert merged is not None and state(merged) == state(full)


def test_sketches_of_different_accuracy_do_not_merge() -> None:
    with pytest.raises(SketchError):
        DurationSketch(0.01).merge(DurationSketch.of([1], 0.02))


@pytest.mark.parametrize(
    "message",
    [
        analytics.DurationSketch(relative_accuracy=0.01, bins={5: 2}, count=3),
        analytics.DurationSketch(relative_accuracy=0.5, bins={5: 1}, count=1),
        analytics.DurationSketch(relative_accuracy=0.01, bins={-3: 1}, count=1),
        analytics.DurationSketch(relative_accuracy=0.01, bins={10**6: 1}, count=1),
        analytics.DurationSketch(
            relative_accuracy=0.01, bins={5: 1}, count=1, min_nanos=9, max_nanos=2
        ),
        analytics.DurationSketch(
            relative_accuracy=0.01,
            bins={i: 1 for i in range(sketches.MAX_BINS + 1)},
            count=sketches.MAX_BINS + 1,
        ),
    ],
    ids=["counts", "accuracy", "negative-bin", "huge-bin", "min-max", "too-many-bins"],
)
def test_malformed_sketches_from_subsystems_are_refused(
    message: analytics.DurationSketch,
) -> None:
    with pytest.raises(SketchError):
        sketches.from_proto(message)
