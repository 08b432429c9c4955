"""Pure search/stats merges, checked against hand-computed answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.merge import catalog as merge
from flowwatch_gateway.proxy.merge import live
from flowwatch_gateway.proxy.merge import search as merge_search
from flowwatch_gateway.proxy.paging import CursorError, offset_cursor

KEY = b"cursor-key-for-tests"


def result(result_id: str, score: float) -> search_pb.SearchResult:
    return search_pb.SearchResult(id=result_id, score=score, run_id=result_id.split(":")[-1])


def answer(
    results: list[search_pb.SearchResult],
    *,
    total: int | None = None,
    more: bool = False,
    query_ms: int = 0,
    facets: search_pb.SearchFacets | None = None,
) -> search_pb.SearchResponse:
    return search_pb.SearchResponse(
        results=results,
        facets=facets,
        pagination=types_pb2.PaginationResponse(
            next_cursor="7" if more else "", total_count=len(results) if total is None else total
        ),
        query_ms=query_ms,
    )


def request(query: str = "error", limit: int = 0, cursor: str = "") -> search_pb.SearchRequest:
    return search_pb.SearchRequest(
        query=query, pagination=types_pb2.PaginationRequest(limit=limit, cursor=cursor)
    )


# --------------------------------------------------------------------------- results


def test_results_merge_by_score_then_id() -> None:
    responses = {
        "b": answer([result("run:b1", 9.0), result("run:b2", 2.0)]),
        "a": answer([result("run:a2", 5.0), result("run:a1", 2.0), result("run:a3", 1.0)]),
    }
    ids = [r.id for r in merge_search.merge_results(responses)]
    assert ids == ["run:b1", "run:a2", "run:a1", "run:b2", "run:a3"]


def test_an_instances_own_tie_order_is_kept() -> None:
    # Instance "a" orders its equal scores by something else (e.g. time): keep that.
    responses = {"a": answer([result("z", 1.0), result("m", 1.0)]), "b": answer([result("n", 1.0)])}
    assert [r.id for r in merge_search.merge_results(responses)] == ["n", "z", "m"]


def test_facets_add_per_key() -> None:
    first = search_pb.SearchFacets(
        status={"RUN_STATUS_FAILED": 2}, workflow={"w1": 1}, error={"E1": 1}
    )
    second = search_pb.SearchFacets(
        status={"RUN_STATUS_FAILED": 3, "RUN_STATUS_SUCCEEDED": 1}, step={"fetch": 4}
    )
    merged = merge_search.merge_facets([first, second])
    assert dict(merged.status) == {"RUN_STATUS_FAILED": 5, "RUN_STATUS_SUCCEEDED": 1}
    assert dict(merged.workflow) == {"w1": 1}
    assert dict(merged.step) == {"fetch": 4}
    assert dict(merged.error) == {"E1": 1}


# --------------------------------------------------------------------------- paging


def test_first_page_asks_each_instance_for_the_page_size() -> None:
    page = merge_search.plan_search_page(request(limit=2), secret=KEY)
    assert (page.offset, page.size, page.upstream_limit) == (0, 2, 2)
    assert merge_search.plan_search_page(request(), secret=KEY).size == 20


def test_pages_walk_the_merged_list_without_repeats() -> None:
    full = {
        "a": [result("a1", 9.0), result("a2", 7.0), result("a3", 3.0)],
        "b": [result("b1", 8.0), result("b2", 1.0)],
    }
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        page = merge_search.plan_search_page(request(limit=2, cursor=cursor), secret=KEY)
        # Each instance answers its best `upstream_limit` results, as a subsystem would.
        responses = {
            iid: answer(
                items[: page.upstream_limit],
                total=len(items),
                more=len(items) > page.upstream_limit,
                query_ms=4 if iid == "a" else 11,
            )
            for iid, items in full.items()
        }
        merged = merge_search.merge_search(responses, page, secret=KEY)
        assert merged.pagination.total_count == 5
        assert merged.query_ms == 11
        seen += [r.id for r in merged.results]
        cursor = merged.pagination.next_cursor
        if not cursor:
            break
    assert seen == ["a1", "b1", "a2", "a3", "b2"]


def test_last_page_has_no_cursor() -> None:
    page = merge_search.plan_search_page(request(limit=5), secret=KEY)
    merged = merge_search.merge_search({"a": answer([result("x", 1.0)])}, page, secret=KEY)
    assert [r.id for r in merged.results] == ["x"]
    assert merged.pagination.next_cursor == ""


def test_paging_stops_at_the_window_but_totals_count_everything() -> None:
    items = [result(f"r{i:03}", 1000.0 - i) for i in range(100)]
    cursor = offset_cursor(80, query=merge_search.search_fingerprint(request()), secret=KEY)
    page = merge_search.plan_search_page(request(limit=50, cursor=cursor), secret=KEY)
    assert page.upstream_limit == merge_search.SEARCH_WINDOW
    merged = merge_search.merge_search({"a": answer(items, total=500, more=True)}, page, secret=KEY)
    assert [r.id for r in merged.results] == [f"r{i:03}" for i in range(80, 100)]
    assert merged.pagination.next_cursor == ""
    assert merged.pagination.total_count == 500


@pytest.mark.parametrize(
    "cursor",
    [
        "20",  # a subsystem's own cursor
        merge.paginate_list(list(range(30)), "", 10, secret=KEY)[1],  # another gateway list cursor
        offset_cursor(20, query="0000000000000000", secret=KEY)[:-2] + "xx",  # edited
        offset_cursor(
            0, query=merge_search.search_fingerprint(request()), secret=KEY
        ),  # never issued
    ],
)
def test_foreign_cursors_are_invalid_argument(cursor: str) -> None:
    with pytest.raises(CursorError) as caught:
        merge_search.plan_search_page(request(cursor=cursor), secret=KEY)
    assert caught.value.code == Code.INVALID_ARGUMENT


def test_a_cursor_only_continues_its_own_query() -> None:
    cursor = offset_cursor(20, query=merge_search.search_fingerprint(request("error")), secret=KEY)
    assert merge_search.plan_search_page(request("error", cursor=cursor), secret=KEY).offset == 20
    with pytest.raises(CursorError, match="different query"):
        merge_search.plan_search_page(request("timeout", cursor=cursor), secret=KEY)


# --------------------------------------------------------------------------- suggest


def suggestions(*pairs: tuple[str, int]) -> search_pb.SuggestResponse:
    return search_pb.SuggestResponse(
        suggestions=[search_pb.Suggestion(value=v, count=c) for v, c in pairs]
    )


def test_suggestions_add_counts_and_sort_by_count_then_value() -> None:
    responses = {
        "a": suggestions(("checkout", 5), ("cancel", 2), ("charge", 1)),
        "b": suggestions(("charge", 4), ("cancel", 3), ("carts", 5)),
    }
    merged = merge_search.merge_suggestions(responses, 3)
    assert [(s.value, s.count) for s in merged.suggestions] == [
        ("cancel", 5),
        ("carts", 5),
        ("charge", 5),
    ]
    assert len(merge_search.merge_suggestions(responses, 0).suggestions) == 4


def test_suggestion_limits() -> None:
    assert merge_search.suggestion_limit(0) == merge_search.DEFAULT_SUGGESTIONS
    assert merge_search.suggestion_limit(1000) == merge_search.MAX_SUGGESTIONS
    with pytest.raises(ConnectError) as caught:
        merge_search.suggestion_limit(-1)
    assert caught.value.code == Code.INVALID_ARGUMENT


# --------------------------------------------------------------------------- index


def test_index_stats_sum_with_worst_lag_and_latest_time() -> None:
    first = search_pb.GetIndexStatsResponse(
        indexed_runs=10,
        indexed_steps=30,
        indexed_log_lines=100,
        index_size_bytes=4096,
        ingestion_lag_seconds=2,
    )
    first.last_indexed_at.FromSeconds(1_000)
    second = search_pb.GetIndexStatsResponse(
        indexed_runs=5,
        indexed_steps=6,
        indexed_log_lines=7,
        index_size_bytes=8,
        ingestion_lag_seconds=9,
    )
    second.last_indexed_at.FromSeconds(2_000)
    third = search_pb.GetIndexStatsResponse(indexed_runs=1)  # never indexed: no time
    merged = merge_search.merge_index_stats({"a": first, "b": second, "c": third})
    assert (
        merged.indexed_runs,
        merged.indexed_steps,
        merged.indexed_log_lines,
        merged.index_size_bytes,
        merged.ingestion_lag_seconds,
        merged.last_indexed_at.seconds,
    ) == (16, 36, 107, 4104, 9, 2_000)
    assert not merge_search.merge_index_stats({"c": third}).HasField("last_indexed_at")


def test_reindex_adds_queued_runs() -> None:
    merged = merge_search.merge_reindex(
        {
            "a": search_pb.ReindexResponse(runs_queued=3),
            "b": search_pb.ReindexResponse(runs_queued=4),
        }
    )
    assert merged.runs_queued == 7


# --------------------------------------------------------------------------- stats


def test_stats_add_and_recompute_the_error_rate() -> None:
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    first = stream.StatsSnapshot(
        running=3,
        succeeded_last_minute=6,
        failed_last_minute=2,
        paused=1,
        rate_per_minute=9.0,
        error_rate=0.25,
    )
    second = stream.StatsSnapshot(
        running=1,
        succeeded_last_minute=0,
        failed_last_minute=2,
        paused=0,
        rate_per_minute=2.0,
        error_rate=1.0,
    )
    merged = live.merge_stats([first, second], now)
    assert (merged.running, merged.succeeded_last_minute, merged.failed_last_minute) == (4, 6, 4)
    assert merged.paused == 1
    assert merged.rate_per_minute == 11.0
    assert merged.error_rate == pytest.approx(0.4)  # 4 / (6 + 4), not the mean 0.625
    assert merged.timestamp.ToDatetime(tzinfo=UTC) == now


def test_stats_with_nothing_finished_have_zero_error_rate() -> None:
    merged = live.merge_stats([stream.StatsSnapshot(running=2)], datetime(2026, 1, 1, tzinfo=UTC))
    assert (merged.running, merged.error_rate) == (2, 0.0)
