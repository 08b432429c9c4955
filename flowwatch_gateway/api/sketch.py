"""A mergeable duration sketch with bounded relative error (the DDSketch idea).

Percentiles of several subsystems' runs together cannot be computed from their
separate percentiles, but they can from sketches that add. A sketch here counts
durations (integer nanoseconds) in logarithmically spaced bins: with relative
accuracy `a` and `gamma = (1 + a) / (1 - a)`, bin `i` holds the durations `x` with
`gamma**(i - 1) < x <= gamma**i`, and a bin is read back as
`2 * gamma**i / (gamma + 1)`, which is within a factor `1 ± a` of every value in
the bin. Durations <= 0 are counted apart (`zero_count`) and read back as 0.

Counts are exact, so the bin that holds the k-th smallest value is known exactly:
a quantile read with the nearest-rank rule (rank `max(1, ceil(q * n))`, the rule the
demo and the SDK use for their own percentiles) is within relative error `a` of
the exact nearest-rank value, plus at most half a nanosecond of rounding. The exact
minimum and maximum are kept and clamp the answer, which only brings it closer.

Merging adds bin counts; it is commutative and associative and loses nothing, so a
sketch of a union equals the merge of the parts' sketches. Sketches merge only at
the same accuracy. Wire form: `flowwatch.v1.DurationSketch` (see
proto/flowwatch/v1/analytics_service.proto); `to_proto`/`from_proto` convert, and
`from_proto` refuses malformed or oversized sketches (they come from subsystems).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics

__all__ = [
    "DEFAULT_RELATIVE_ACCURACY",
    "MAX_BINS",
    "DurationSketch",
    "SketchError",
    "from_proto",
    "merge_all",
    "nearest_rank",
    "to_proto",
]

DEFAULT_RELATIVE_ACCURACY = 0.01
# At 1 % one bin spans 2 %; every int64 nanosecond duration (up to ~292 years) needs
# fewer than 2,200 bins, so a larger sketch is malformed, not merely big.
MAX_BINS = 4096
# Accuracies outside this range are either useless (> 10 %) or absurdly fine.
MIN_ACCURACY = 1e-4
MAX_ACCURACY = 0.1


def nearest_rank(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of ascending values; 0 for no values.

    The one percentile rule of the demo, the SDK and the gateway: the value at 1-based
    rank max(1, ceil(percent / 100 * n)). Sketch quantiles use the same rank.
    """
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class SketchError(ValueError):
    """A sketch that cannot be used: malformed, oversized, or of another accuracy."""


@dataclass
class DurationSketch:
    """Counts of durations in log-spaced bins; see the module docstring."""

    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
    bins: dict[int, int] = field(default_factory=dict)
    zero_count: int = 0
    count: int = 0
    min_ns: int = 0
    max_ns: int = 0

    def __post_init__(self) -> None:
        if not MIN_ACCURACY <= self.relative_accuracy <= MAX_ACCURACY:
            raise SketchError(
                f"relative_accuracy must be within [{MIN_ACCURACY}, {MAX_ACCURACY}], "
                f"got {self.relative_accuracy!r}"
            )
        self._gamma = (1 + self.relative_accuracy) / (1 - self.relative_accuracy)
        self._log_gamma = math.log(self._gamma)

    @classmethod
    def of(
        cls, values: Iterable[int], relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
    ) -> DurationSketch:
        sketch = cls(relative_accuracy)
        for value in values:
            sketch.add(value)
        return sketch

    def index(self, value_ns: int) -> int:
        """The bin of a positive duration: ceil(log_gamma(value))."""
        return math.ceil(math.log(value_ns) / self._log_gamma)

    def add(self, value_ns: int, times: int = 1) -> None:
        if times <= 0:
            return
        if self.count == 0:
            self.min_ns = self.max_ns = value_ns
        else:
            self.min_ns = min(self.min_ns, value_ns)
            self.max_ns = max(self.max_ns, value_ns)
        self.count += times
        if value_ns <= 0:
            self.zero_count += times
            return
        key = self.index(value_ns)
        self.bins[key] = self.bins.get(key, 0) + times

    def merge(self, other: DurationSketch) -> None:
        """Add `other`'s counts into this sketch (same accuracy only)."""
        if other.relative_accuracy != self.relative_accuracy:
            raise SketchError(
                f"cannot merge sketches of accuracy {self.relative_accuracy} and "
                f"{other.relative_accuracy}"
            )
        if other.count == 0:
            return
        if self.count == 0:
            self.min_ns, self.max_ns = other.min_ns, other.max_ns
        else:
            self.min_ns = min(self.min_ns, other.min_ns)
            self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.zero_count += other.zero_count
        for key, hits in other.bins.items():
            self.bins[key] = self.bins.get(key, 0) + hits

    def quantile(self, percent: float) -> int:
        """Nearest-rank `percent` (0-100) in nanoseconds; 0 for an empty sketch."""
        if self.count == 0:
            return 0
        rank = max(1, math.ceil(percent / 100 * self.count))
        if rank <= self.zero_count:
            return 0
        seen = self.zero_count
        for key in sorted(self.bins):
            seen += self.bins[key]
            if seen >= rank:
                value = 2 * self._gamma**key / (self._gamma + 1)
                return min(self.max_ns, max(self.min_ns, round(value)))
        return self.max_ns  # unreachable when the counts add up (from_proto checks)

    def copy(self) -> DurationSketch:
        return DurationSketch(
            self.relative_accuracy,
            dict(self.bins),
            self.zero_count,
            self.count,
            self.min_ns,
            self.max_ns,
        )


def merge_all(sketches: Iterable[DurationSketch]) -> DurationSketch | None:
    """The merge of every sketch (None for none); the inputs are not changed."""
    merged: DurationSketch | None = None
    for sketch in sketches:
        if merged is None:
            merged = sketch.copy()
        else:
            merged.merge(sketch)
    return merged


def to_proto(sketch: DurationSketch) -> analytics.DurationSketch:
    return analytics.DurationSketch(
        relative_accuracy=sketch.relative_accuracy,
        bins={key: hits for key, hits in sketch.bins.items() if hits},
        zero_count=sketch.zero_count,
        count=sketch.count,
        min_nanos=sketch.min_ns,
        max_nanos=sketch.max_ns,
    )


def from_proto(message: analytics.DurationSketch) -> DurationSketch:
    """A subsystem's sketch, checked: bins within bounds and counts that add up."""
    bins: Mapping[int, int] = message.bins
    if len(bins) > MAX_BINS:
        raise SketchError(f"sketch has {len(bins)} bins; at most {MAX_BINS} are accepted")
    if sum(bins.values()) + message.zero_count != message.count:
        raise SketchError("sketch bin counts and zero_count do not add up to count")
    if message.count and message.min_nanos > message.max_nanos:
        raise SketchError("sketch min_nanos is greater than max_nanos")
    sketch = DurationSketch(
        message.relative_accuracy,
        {int(key): int(hits) for key, hits in bins.items() if hits},
        int(message.zero_count),
        int(message.count),
        int(message.min_nanos),
        int(message.max_nanos),
    )
    # Durations are int64 nanoseconds >= 1 in bins: indexes in [0, index(2**63)].
    top = sketch.index(2**63)
    if any(not 0 <= key <= top for key in sketch.bins):
        raise SketchError(f"sketch bin index outside [0, {top}]")
    return sketch
