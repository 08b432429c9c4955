"""Merging runs: the k-way merge of several subsystems' ListRuns pages, and bulk results.

A gateway page is a merge of several subsystems' pages. To return every run exactly
once, in order, without re-reading from the top, the gateway cursor records for
each taking-part subsystem the subsystem's own cursor of the page it is in the
middle of and how many runs of that page were already handed out (`skip`). Each call
re-fetches that page once with a limit big enough to still hold `limit` unseen runs.
Subsystem cursors are opaque strings and are never parsed.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flowwatch_gateway.api.limits import MAX_PAGE_SIZE
from flowwatch_gateway.api.ordering import OrderField, RunSortKey, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_pb2 as runs,
)
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.paging import InstanceCursor, ListRunsCursor


@dataclass(frozen=True)
class PageFetch:
    """One upstream ListRuns call to make: cursor and limit to send, runs to skip in the answer."""

    upstream_cursor: str
    limit: int
    skip: int


@dataclass(frozen=True)
class InstancePage:
    """What an instance answered to a PageFetch."""

    runs: Sequence[types_pb2.Run]
    next_cursor: str
    total_count: int


@dataclass
class MergedPage:
    """One gateway page: (instance id, run) in order, the state to continue from, the total.

    `next_state` is None when every instance is exhausted. `failed` lists the
    instances whose runs are still owed (no answer this call); their state is kept.
    """

    runs: list[tuple[str, types_pb2.Run]]
    next_state: ListRunsCursor | None
    total_count: int
    failed: list[str] = dataclasses.field(default_factory=list)


def plan_fetches(
    state: ListRunsCursor | None, instance_ids: Sequence[str], limit: int
) -> dict[str, PageFetch]:
    """The one upstream page to fetch per instance for a gateway page of `limit` runs.

    First page (state None): every instance in instance_ids from the start. Later:
    every non-exhausted instance of the cursor that is still among instance_ids
    (an instance that is gone is left out and reported as failed by merge_page;
    instances that appeared later are not mixed in). The current page is fetched
    again with limit skip+limit (capped at the max) so that, after skipping what
    was already sent, up to `limit` unseen runs remain.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be in 1..{MAX_PAGE_SIZE}; got {limit}")
    if state is None:
        return {instance_id: PageFetch("", limit, 0) for instance_id in instance_ids}
    available = set(instance_ids)
    return {
        instance_id: PageFetch(
            instance.upstream_cursor, min(MAX_PAGE_SIZE, instance.skip + limit), instance.skip
        )
        for instance_id, instance in sorted(state.instances.items())
        if not instance.exhausted and instance_id in available
    }


def merge_page(
    state: ListRunsCursor | None,
    fetches: Mapping[str, PageFetch],
    pages: Mapping[str, InstancePage],
    limit: int,
    field: OrderField,
    descending: bool,
    *,
    query: str | None = None,
) -> MergedPage:
    """K-way merge of the instances' pages into one gateway page and the state after it.

    Emits up to `limit` runs in (field, descending) order, ties broken by instance
    id. It stops early when an instance with further pages has no buffered run
    left, because that instance's next unseen run could sort before anything else.
    An instance missing from `pages` (or not fetched) failed this call: its state is
    kept so its runs come on a later page, neither lost nor repeated, and it is
    listed in `failed`. Runs of one instance are never reordered.

    `query` (the fingerprint) is required when `state` is None, i.e. on the first page.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")
    if state is None:
        if query is None:
            raise ValueError("merge_page needs the query fingerprint for a first page")
        previous = {instance_id: InstanceCursor("", 0, False, 0) for instance_id in fetches}
    else:
        previous = dict(state.instances)
        query = state.query

    buffers: dict[str, Sequence[types_pb2.Run]] = {}
    has_more: dict[str, bool] = {}
    failed: list[str] = []
    for instance_id, instance in sorted(previous.items()):
        if instance.exhausted:
            continue
        page = pages.get(instance_id)
        if page is None or instance_id not in fetches:
            failed.append(instance_id)
            continue
        buffers[instance_id] = page.runs[instance.skip :]
        has_more[instance_id] = page.next_cursor != ""

    emitted, consumed = _k_way_merge(buffers, has_more, limit, field, descending)

    next_instances: dict[str, InstanceCursor] = {}
    for instance_id, instance in previous.items():
        if instance_id not in buffers:
            next_instances[instance_id] = instance
            continue
        page = pages[instance_id]
        if consumed[instance_id] < len(buffers[instance_id]):
            next_instances[instance_id] = InstanceCursor(
                instance.upstream_cursor,
                instance.skip + consumed[instance_id],
                False,
                page.total_count,
            )
        elif page.next_cursor:
            next_instances[instance_id] = InstanceCursor(
                page.next_cursor, 0, False, page.total_count
            )
        else:
            next_instances[instance_id] = InstanceCursor("", 0, True, page.total_count)

    total = sum(instance.total for instance in next_instances.values())
    done = all(instance.exhausted for instance in next_instances.values())
    next_state = None if done else ListRunsCursor(query, next_instances)
    return MergedPage(emitted, next_state, total, failed)


@dataclass(frozen=True)
class _HeapEntry:
    """Heap item ordering runs in the requested direction, ties by instance id."""

    key: RunSortKey
    descending: bool
    instance_id: str
    index: int

    def __lt__(self, other: _HeapEntry) -> bool:
        if self.key != other.key:
            return (self.key > other.key) if self.descending else (self.key < other.key)
        return self.instance_id < other.instance_id


def _k_way_merge(
    buffers: Mapping[str, Sequence[types_pb2.Run]],
    has_more: Mapping[str, bool],
    limit: int,
    field: OrderField,
    descending: bool,
) -> tuple[list[tuple[str, types_pb2.Run]], dict[str, int]]:
    """Emit up to `limit` runs; returns them and how many were taken from each buffer."""
    consumed = {instance_id: 0 for instance_id in buffers}
    emitted: list[tuple[str, types_pb2.Run]] = []
    # An instance that has nothing buffered but more pages blocks the whole merge.
    if any(not runs and has_more[instance_id] for instance_id, runs in buffers.items()):
        return emitted, consumed

    heap = [
        _HeapEntry(run_sort_key(runs[0], field), descending, instance_id, 0)
        for instance_id, runs in buffers.items()
        if runs
    ]
    heapq.heapify(heap)
    while heap and len(emitted) < limit:
        entry = heapq.heappop(heap)
        runs = buffers[entry.instance_id]
        emitted.append((entry.instance_id, runs[entry.index]))
        consumed[entry.instance_id] += 1
        following = entry.index + 1
        if following < len(runs):
            heapq.heappush(
                heap,
                _HeapEntry(
                    run_sort_key(runs[following], field), descending, entry.instance_id, following
                ),
            )
        elif has_more[entry.instance_id]:
            break
    return emitted, consumed


NO_ANSWER_ERROR = "no subsystem answered for this run"


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
