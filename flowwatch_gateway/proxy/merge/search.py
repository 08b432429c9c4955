"""Pure merges for the live half of the API: search answers and stats snapshots.

Search results from several instances are merged by score; the gateway pages over
the merged list with its own cursor because an instance's cursor only walks that
instance's results. Each page is served by asking every instance again for its
best `offset + page size` results: the first k merged results only depend on each
instance's first k, so pages never repeat or skip a result as long as the
instances' answers do not change in between. That is only exact within the first
`SEARCH_WINDOW` merged results (an instance answers at most 100 per call), so the
gateway stops offering further pages there; `total_count` still counts every match.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import timestamp_pb2

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.paging import (
    NOT_ISSUED_MESSAGE,
    CursorError,
    seal_token,
    unseal_token,
)

SEARCH_CURSOR_VERSION = "s1"
# The deepest merged result the gateway serves: an instance returns at most 100 per call.
SEARCH_WINDOW = 100
DEFAULT_SUGGESTIONS = 10
MAX_SUGGESTIONS = 100
_FACET_MAPS = ("status", "workflow", "step", "error")


# --------------------------------------------------------------------------- search


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


def plan_search_page(request: search_pb.SearchRequest) -> SearchPage:
    """The slice a request asks for; CursorError for a cursor this gateway did not issue."""
    query = search_fingerprint(request)
    size = effective_page_size(request.pagination.limit)
    cursor = request.pagination.cursor
    if not cursor:
        return SearchPage(0, size, query)
    try:
        document = json.loads(unseal_token(cursor, SEARCH_CURSOR_VERSION))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CursorError(NOT_ISSUED_MESSAGE) from exc
    if not isinstance(document, dict) or set(document) != {"o", "q"}:
        raise CursorError(NOT_ISSUED_MESSAGE)
    offset, issued_for = document["o"], document["q"]
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 < offset < SEARCH_WINDOW:
        raise CursorError(NOT_ISSUED_MESSAGE)
    if issued_for != query:
        raise CursorError(
            "cursor belongs to a different query, scope or time range; start again without a cursor"
        )
    return SearchPage(offset, size, query)


def search_cursor(offset: int, query: str) -> str:
    return seal_token(SEARCH_CURSOR_VERSION, json.dumps({"o": offset, "q": query}).encode())


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
    responses: Mapping[str, search_pb.SearchResponse], page: SearchPage
) -> search_pb.SearchResponse:
    """One page of the merged results, with summed facets and totals and the slowest query_ms."""
    merged = merge_results(responses)
    end = min(page.offset + page.size, SEARCH_WINDOW)
    results = merged[page.offset : end]
    more_upstream = any(r.pagination.next_cursor for r in responses.values())
    next_cursor = ""
    if end < SEARCH_WINDOW and (len(merged) > end or more_upstream):
        next_cursor = search_cursor(end, page.query)
    total = sum(max(r.pagination.total_count, len(r.results)) for r in responses.values())
    return search_pb.SearchResponse(
        results=results,
        facets=merge_facets(r.facets for r in responses.values()),
        pagination=types_pb2.PaginationResponse(next_cursor=next_cursor, total_count=total),
        query_ms=max((r.query_ms for r in responses.values()), default=0),
    )


# --------------------------------------------------------------------------- suggest


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


# --------------------------------------------------------------------------- index


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


# --------------------------------------------------------------------------- stats


def merge_stats(snapshots: Iterable[stream.StatsSnapshot], now: datetime) -> stream.StatsSnapshot:
    """Counters and rates added; the error rate recomputed from the added last-minute counts.

    Error rate = failed / (succeeded + failed) over the last minute, 0 when nothing
    finished: a mean of the instances' rates would weigh a quiet instance like a
    busy one.
    """
    merged = stream.StatsSnapshot()
    merged.timestamp.FromDatetime(now)
    for snapshot in snapshots:
        merged.running += snapshot.running
        merged.succeeded_last_minute += snapshot.succeeded_last_minute
        merged.failed_last_minute += snapshot.failed_last_minute
        merged.paused += snapshot.paused
        merged.rate_per_minute += snapshot.rate_per_minute
    finished = merged.succeeded_last_minute + merged.failed_last_minute
    merged.error_rate = merged.failed_last_minute / finished if finished else 0.0
    return merged
