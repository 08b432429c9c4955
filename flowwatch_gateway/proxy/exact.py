"""Exact run durations for merged latency: each subsystem's finished runs, by bucket.

A subsystem that sends no sketch still answers ListRuns. Listing its finished runs
in the window (time range and status filters, pages of 100, its own cursor
followed to the end) gives the exact durations behind its latency buckets, bucketed
the way subsystems bucket them (by started_at, floor to the granularity from the
UNIX epoch). A run's duration is its `duration`, else finished_at - started_at.

Buckets that can no longer change are remembered (`DurationCache`): a bucket that
ended before the listing began and whose runs had all finished (the subsystem's
throughput says so) is reused while the subsystem's counts still match, so a UI
polling the last 24 h re-lists only the current bucket and the ones still running.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2, types_pb2
from flowwatch_gateway.proxy.upstream import UpstreamClients

__all__ = [
    "BucketCounts",
    "DurationCache",
    "ListingPlan",
    "bucket_counts",
    "list_durations",
    "run_duration_ns",
    "trim_edges",
]

PAGE_SIZE = 100
FINISHED = (
    types_pb2.RUN_STATUS_SUCCEEDED,
    types_pb2.RUN_STATUS_FAILED,
    types_pb2.RUN_STATUS_CANCELED,
)


@dataclass(frozen=True)
class BucketCounts:
    """A subsystem's runs in one bucket, from its GetThroughput answer."""

    finished: int
    unfinished: int


def bucket_counts(response: analytics.GetThroughputResponse) -> dict[int, BucketCounts]:
    """Finished and unfinished run counts per bucket start (ns)."""
    counts: dict[int, BucketCounts] = {}
    for bucket in response.buckets:
        finished = bucket.succeeded + bucket.failed + bucket.canceled
        total = max(bucket.total, finished + bucket.running)
        counts[int(bucket.timestamp.ToNanoseconds())] = BucketCounts(finished, total - finished)
    return counts


def run_duration_ns(run: types_pb2.Run) -> int | None:
    """The run's `duration`, else finished_at - started_at; None if neither is known."""
    if run.HasField("duration"):
        return int(run.duration.ToNanoseconds())
    if run.HasField("started_at") and run.HasField("finished_at"):
        return int(run.finished_at.ToNanoseconds() - run.started_at.ToNanoseconds())
    return None


def trim_edges(
    runs: Sequence[tuple[int, int]],
    *,
    first_bucket: int,
    last_bucket: int,
    bucket_ns: int,
    counts: Mapping[int, BucketCounts],
) -> dict[int, list[int]]:
    """(started ns, duration ns) pairs -> ascending durations per bucket start.

    The edge buckets may hold runs the subsystem did not count: without a time
    range the subsystem's window starts at its own "now - 24 h", inside the first
    bucket, and runs keep starting after it answered. When the listing holds more
    finished runs there than the subsystem counted, the first bucket keeps its
    latest-started ones and the last bucket its earliest-started ones.
    """
    grouped: dict[int, list[tuple[int, int]]] = {}
    for started_ns, duration_ns in runs:
        grouped.setdefault((started_ns // bucket_ns) * bucket_ns, []).append(
            (started_ns, duration_ns)
        )
    result: dict[int, list[int]] = {}
    for start, members in grouped.items():
        members.sort()
        expected = counts.get(start)
        if expected is not None and len(members) > expected.finished:
            if start == first_bucket:
                members = members[len(members) - expected.finished :]
            elif start == last_bucket:
                members = members[: expected.finished]
        result[start] = sorted(duration for _, duration in members)
    return result


@dataclass
class ListingPlan:
    """What to list for one subsystem: buckets to fetch, and what the cache already has."""

    instance: UpstreamClients
    epoch: int
    fetch: list[int] = field(default_factory=list)
    cached: dict[int, list[int]] = field(default_factory=dict)

    def runs_to_fetch(self, counts: Mapping[int, BucketCounts]) -> int:
        return sum(counts[start].finished for start in self.fetch if start in counts)

    def ranges(self, bucket_ns: int, from_ns: int, to_ns: int) -> list[tuple[int, int]]:
        """The buckets to fetch as time ranges: consecutive buckets joined, clipped.

        Listing each stretch apart keeps a poll that needs only the first (partial)
        and the current bucket from paging through the whole day in between.
        """
        ranges: list[tuple[int, int]] = []
        for start in sorted(self.fetch):
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], start + bucket_ns)
            else:
                ranges.append((start, start + bucket_ns))
        clipped = [(max(a, from_ns), min(b, to_ns)) for a, b in ranges]
        return [(a, b) for a, b in clipped if a < b]


class DurationCache:
    """Durations of buckets that cannot change any more, least recently used out."""

    def __init__(self, max_buckets: int = 20_000) -> None:
        self._max = max_buckets
        self._entries: OrderedDict[tuple[object, ...], tuple[int, ...]] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> tuple[int, ...] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[object, ...], durations: Sequence[int]) -> None:
        self._entries[key] = tuple(durations)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


async def list_durations(
    clients: UpstreamClients,
    *,
    ranges: Sequence[tuple[int, int]],
    workflow_id: str,
    subsystem_id: str,
    timeout_ms: int,
    max_runs: int,
    semaphore: asyncio.Semaphore,
) -> list[tuple[int, int]]:
    """(started ns, duration ns) of every finished run that started in one of `ranges`.

    Each range [from, to) is paged through the subsystem's own cursor; one page in
    flight per subsystem and at most `semaphore`'s worth of subsystems at once. More
    than `max_runs` runs is an error (the throughput counts promised fewer):
    OverflowError.
    """
    found: list[tuple[int, int]] = []
    async with semaphore:
        for from_ns, to_ns in ranges:
            await _list_range(
                clients, found, from_ns, to_ns, workflow_id, subsystem_id, timeout_ms, max_runs
            )
    return found


async def _list_range(
    clients: UpstreamClients,
    found: list[tuple[int, int]],
    from_ns: int,
    to_ns: int,
    workflow_id: str,
    subsystem_id: str,
    timeout_ms: int,
    max_runs: int,
) -> None:
    run_filter = run_service_pb2.RunFilter(
        statuses=FINISHED,
        time_range=types_pb2.TimeRange(),
        workflow_ids=[workflow_id] if workflow_id else [],
        subsystem_ids=[subsystem_id] if subsystem_id else [],
    )
    getattr(run_filter.time_range, "from").FromNanoseconds(from_ns)
    run_filter.time_range.to.FromNanoseconds(to_ns)
    cursor = ""
    while True:
        page = await clients.runs.list_runs(
            run_service_pb2.ListRunsRequest(
                filter=run_filter,
                pagination=types_pb2.PaginationRequest(cursor=cursor, limit=PAGE_SIZE),
                order_by="started_at",
            ),
            timeout_ms=timeout_ms,
        )
        for run in page.runs:
            duration = run_duration_ns(run)
            if duration is None or run.status not in FINISHED:
                continue
            started = int(run.started_at.ToNanoseconds())
            if from_ns <= started < to_ns:
                found.append((started, duration))
        if len(found) > max_runs:
            raise OverflowError(f"more than {max_runs} finished runs")
        cursor = page.pagination.next_cursor
        if not cursor or not page.runs:
            return
