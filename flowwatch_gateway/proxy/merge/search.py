"""Merging search answers: results by score, facets, suggestions, index stats, reindex.

Search results from several subsystems are merged by score; the gateway pages over
the merged list with its own cursor because a subsystem's cursor only walks that
subsystem's results. Each page is served by asking every subsystem again for its
best `offset + page size` results: the first k merged results only depend on each
subsystem's first k, so pages never repeat or skip a result as long as the answers
do not change in between. That is only exact within the first `SEARCH_WINDOW` merged
results (a subsystem answers at most 100 per call), so the gateway stops offering
further pages there; `total_count` still counts every match.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import timestamp_pb2

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.paging import (
    NOT_ISSUED_MESSAGE,
    CursorError,
    decode_search_cursor,
    offset_cursor,
)

# The deepest merged result the gateway serves: an instance returns at most 100 per call.
SEARCH_WINDOW = 100


DEFAULT_SUGGESTIONS = 10


MAX_SUGGESTIONS = 100


_FACET_MAPS = ("status", "workflow", "step", "error")


@dataclass(frozen=True)
class SearchPage:
    """Which slice of the merged results a Search call asks for, and for which query."""

    offset: int
    size: int
    query: str

    @property
    def upstream_limit(self) -> int:
        """How many results to ask each instance for so the slice is exact."""
        return min(self.offset + self.size, SEARCH_WINDOW)


def search_fingerprint(request: search_pb.SearchRequest) -> str:
    """A digest of what the results depend on; a cursor only continues the same search."""
    subject = search_pb.SearchRequest(
        query=request.query, scope=request.scope, time_range=request.time_range
    )
    return hashlib.sha256(subject.SerializeToString(deterministic=True)).hexdigest()[:16]


def plan_search_page(request: search_pb.SearchRequest, *, secret: bytes) -> SearchPage:
    """The slice a request asks for; CursorError for a cursor this gateway did not issue."""
    query = search_fingerprint(request)
    size = effective_page_size(request.pagination.limit)
    cursor = request.pagination.cursor
    if not cursor:
        return SearchPage(0, size, query)
    offset = decode_search_cursor(cursor, query, secret=secret)
    if not 0 < offset < SEARCH_WINDOW:
        raise CursorError(NOT_ISSUED_MESSAGE)
    return SearchPage(offset, size, query)


def merge_results(
    responses: Mapping[str, search_pb.SearchResponse],
) -> list[search_pb.SearchResult]:
    """Every instance's results by score (highest first), then id, then instance id.

    A k-way merge rather than a sort: each instance's own order is kept, so where an
    instance breaks score ties differently its results still come out in its order
    and a longer answer from it only ever extends the merged list.
    """
    ordered = sorted(responses)
    streams = [
        [(-result.score, result.id, index, result) for result in responses[instance_id].results]
        for index, instance_id in enumerate(ordered)
    ]
    return [row[3] for row in heapq.merge(*streams, key=lambda row: row[:3])]


def merge_facets(facets: Iterable[search_pb.SearchFacets]) -> search_pb.SearchFacets:
    """Facet counts added per key, for each of the four facet maps."""
    totals = {name: Counter[str]() for name in _FACET_MAPS}
    for facet in facets:
        for name in _FACET_MAPS:
            totals[name].update(dict(getattr(facet, name)))
    merged = search_pb.SearchFacets()
    for name in _FACET_MAPS:
        getattr(merged, name).update(totals[name])
    return merged


def merge_search(
    responses: Mapping[str, search_pb.SearchResponse], page: SearchPage, *, secret: bytes
) -> search_pb.SearchResponse:
    """One page of the merged results, with summed facets and totals and the slowest query_ms."""
    merged = merge_results(responses)
    end = min(page.offset + page.size, SEARCH_WINDOW)
    results = merged[page.offset : end]
    more_upstream = any(r.pagination.next_cursor for r in responses.values())
    next_cursor = ""
    if end < SEARCH_WINDOW and (len(merged) > end or more_upstream):
        next_cursor = offset_cursor(end, query=page.query, secret=secret)
    total = sum(max(r.pagination.total_count, len(r.results)) for r in responses.values())
    return search_pb.SearchResponse(
        results=results,
        facets=merge_facets(r.facets for r in responses.values()),
        pagination=types_pb2.PaginationResponse(next_cursor=next_cursor, total_count=total),
        query_ms=max((r.query_ms for r in responses.values()), default=0),
    )


def suggestion_limit(requested: int) -> int:
    """0 means the default; more than the maximum is capped; negative is a caller error."""
    if requested < 0:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"Suggest: limit must not be negative; got {requested}"
        )
    return min(requested or DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS)


def merge_suggestions(
    responses: Mapping[str, search_pb.SuggestResponse], limit: int
) -> search_pb.SuggestResponse:
    """Counts added per value; most frequent first, then by value; at most `limit` of them."""
    counts = Counter[str]()
    for response in responses.values():
        for suggestion in response.suggestions:
            counts[suggestion.value] += suggestion.count
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return search_pb.SuggestResponse(
        suggestions=[
            search_pb.Suggestion(value=value, count=count)
            for value, count in ordered[: suggestion_limit(limit)]
        ]
    )


def merge_index_stats(
    responses: Mapping[str, search_pb.GetIndexStatsResponse],
) -> search_pb.GetIndexStatsResponse:
    """Sizes add up; lag is the worst instance's; last_indexed_at the latest one."""
    merged = search_pb.GetIndexStatsResponse()
    latest: timestamp_pb2.Timestamp | None = None
    for response in responses.values():
        merged.indexed_runs += response.indexed_runs
        merged.indexed_steps += response.indexed_steps
        merged.indexed_log_lines += response.indexed_log_lines
        merged.index_size_bytes += response.index_size_bytes
        merged.ingestion_lag_seconds = max(
            merged.ingestion_lag_seconds, response.ingestion_lag_seconds
        )
        if response.HasField("last_indexed_at") and (
            latest is None or response.last_indexed_at.ToNanoseconds() > latest.ToNanoseconds()
        ):
            latest = response.last_indexed_at
    if latest is not None:
        merged.last_indexed_at.CopyFrom(latest)
    return merged


def merge_reindex(responses: Mapping[str, search_pb.ReindexResponse]) -> search_pb.ReindexResponse:
    return search_pb.ReindexResponse(
        runs_queued=sum(response.runs_queued for response in responses.values())
    )
