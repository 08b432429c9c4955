"""Merging runs: one gateway page from several subsystems' runs, and bulk results.

Keyset paging: a gateway page hands out the next `limit` runs after the last one it
handed out before (the cursor keeps only that run's sort key). Each subsystem
contributes the runs it holds past that key, sorted; a k-way merge takes the first
`limit`. A subsystem that may hold further runs (it was not read to the end) stops
the merge when its buffer runs dry, since its next run could sort before any other.
Runs that change their sort key meanwhile (duration, status) can be missed or seen
again on a later page, never twice on one page.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flowwatch_gateway.api.ordering import OrderField, RunSortKey, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.merge._protobuf import timestamp_from_ns

__all__ = [
    "NO_ANSWER_ERROR",
    "SubsystemRuns",
    "comes_after",
    "merge_after",
    "merge_bulk_results",
    "narrow_filter",
    "owned",
]


def owned(run: types_pb2.Run, instance_id: str) -> types_pb2.Run:
    """The run, naming the subsystem that answered for it when it names none itself."""
    if not run.subsystem_id:
        run.subsystem_id = instance_id
    return run


def comes_after(key: RunSortKey, last: RunSortKey, descending: bool) -> bool:
    """Whether a run with sort key `key` belongs after the run with key `last`."""
    return key < last if descending else key > last


def narrow_filter(
    run_filter: runs.RunFilter, field: OrderField, descending: bool, after: RunSortKey | None
) -> runs.RunFilter:
    """The filter to send upstream: in started_at order, only runs not newer than `after`.

    Subsystems that apply `time_range` then answer with runs past the key on their
    first page; those that ignore it are read further (see run_reader.py). The bound
    keeps runs that started at the same instant as the last one (ties go by run id).
    """
    if after is None or field != "started_at":
        return run_filter
    narrowed = runs.RunFilter()
    narrowed.CopyFrom(run_filter)
    started = after[1]
    bounds = narrowed.time_range
    if descending:
        # `to` is exclusive: one nanosecond later keeps runs that started with the last one.
        limit = started + 1
        if not bounds.HasField("to") or bounds.to.ToNanoseconds() > limit:
            bounds.to.CopyFrom(timestamp_from_ns(limit))
    else:
        current = getattr(bounds, "from")
        if not bounds.HasField("from") or current.ToNanoseconds() < started:
            current.CopyFrom(timestamp_from_ns(started))
    return narrowed


@dataclass(frozen=True)
class SubsystemRuns:
    """A subsystem's runs past the cursor, in the requested order, each once.

    `has_more`: the subsystem may hold further such runs, all sorting after these.
    """

    runs: Sequence[types_pb2.Run]
    has_more: bool
    # The runs' sort keys, when the reader already computed them (else computed here).
    keys: Sequence[RunSortKey] | None = None


def merge_after(
    parts: Mapping[str, SubsystemRuns], limit: int, field: OrderField, descending: bool
) -> tuple[list[tuple[str, types_pb2.Run]], bool]:
    """The next `limit` runs as (subsystem id, run), and whether any run is left after them."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")
    emitted, consumed = _k_way_merge(parts, limit, field, descending)
    left = any(consumed[iid] < len(part.runs) or part.has_more for iid, part in parts.items())
    return emitted, left and bool(emitted)


class _HeapEntry:
    """Heap item ordering runs in the requested direction, ties by instance id.

    A plain slotted class: a frozen dataclass's __init__ was a visible share of a
    gateway page's cost (one entry per run emitted).
    """

    __slots__ = ("descending", "index", "instance_id", "key")

    def __init__(self, key: RunSortKey, descending: bool, instance_id: str, index: int) -> None:
        self.key = key
        self.descending = descending
        self.instance_id = instance_id
        self.index = index

    def __lt__(self, other: _HeapEntry) -> bool:
        if self.key != other.key:
            return (self.key > other.key) if self.descending else (self.key < other.key)
        return self.instance_id < other.instance_id


def _k_way_merge(
    parts: Mapping[str, SubsystemRuns], limit: int, field: OrderField, descending: bool
) -> tuple[list[tuple[str, types_pb2.Run]], dict[str, int]]:
    """Emit up to `limit` runs; returns them and how many were taken from each buffer."""
    consumed = {instance_id: 0 for instance_id in parts}
    emitted: list[tuple[str, types_pb2.Run]] = []
    # An instance that has nothing buffered but more pages blocks the whole merge.
    if any(not part.runs and part.has_more for part in parts.values()):
        return emitted, consumed
    filled = [(iid, part) for iid, part in parts.items() if part.runs]
    if len(filled) == 1:
        # One subsystem with runs (always so with one subsystem): its runs are in order
        # already, and the heap would emit exactly its first `limit`.
        instance_id, part = filled[0]
        taken = part.runs[:limit]
        consumed[instance_id] = len(taken)
        return [(instance_id, run) for run in taken], consumed
    keys = {
        iid: part.keys if part.keys is not None else [run_sort_key(r, field) for r in part.runs]
        for iid, part in filled
    }
    heap = [_HeapEntry(keys[iid][0], descending, iid, 0) for iid, _ in filled]
    heapq.heapify(heap)
    while heap and len(emitted) < limit:
        entry = heapq.heappop(heap)
        runs = parts[entry.instance_id].runs
        emitted.append((entry.instance_id, runs[entry.index]))
        consumed[entry.instance_id] += 1
        following = entry.index + 1
        if following < len(runs):
            key = keys[entry.instance_id][following]
            heapq.heappush(heap, _HeapEntry(key, descending, entry.instance_id, following))
        elif parts[entry.instance_id].has_more:
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
