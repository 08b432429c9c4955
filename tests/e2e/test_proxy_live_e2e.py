"""StreamService and SearchService through a real gateway in front of real demo subsystems.

Two demo subsystems (own processes, HTTP/1.1-only uvicorn, time frozen at start so
counters only change through actions) sit behind a pyvoy gateway. Streams are
read through the gateway over HTTP/2; answers are checked against the
subsystems' own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pyqwest
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_connect,
    run_service_pb2,
    search_service_connect,
    search_service_pb2,
    stream_service_connect,
    stream_service_pb2,
    types_pb2,
)
from tests.support.harness import http2_client
from tests.support.upstreams import DemoStack, demo_stack, wait_until

pytestmark = pytest.mark.anyio

SUBSYSTEMS = {"orders": 1, "payments": 2}
T = TypeVar("T")


Stack = DemoStack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with demo_stack(
        SUBSYSTEMS, "--heartbeat", "500ms", "--grace-period", "3s", "--upstream-timeout", "2s"
    ) as running:
        yield running


def direct_http() -> pyqwest.Client:
    return pyqwest.Client(pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP1))


def gateway_streams(stack: Stack) -> stream_service_connect.StreamServiceClient:
    return stream_service_connect.StreamServiceClient(
        stack.gateway.url, http_client=http2_client(), send_compression=None
    )


def gateway_search(stack: Stack) -> search_service_connect.SearchServiceClient:
    return search_service_connect.SearchServiceClient(
        stack.gateway.url, http_client=http2_client(), send_compression=None
    )


def direct_search(endpoint: str) -> search_service_connect.SearchServiceClient:
    return search_service_connect.SearchServiceClient(endpoint, http_client=direct_http())


async def read_until(
    events: AsyncIterator[T], done: Callable[[list[T]], bool], within: float, what: str
) -> list[T]:
    """Read events until `done(seen)`; then close the stream, as a client going away does."""
    seen: list[T] = []

    async def consume() -> None:
        async for event in events:
            seen.append(event)
            if done(seen):
                return

    try:
        await asyncio.wait_for(consume(), within)
    except (TimeoutError, ConnectError) as exc:
        if isinstance(exc, ConnectError) and exc.code != Code.CANCELED:
            raise
        raise AssertionError(f"timed out waiting for {what}; got {len(seen)} events") from None
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
    return seen


async def direct_total(endpoint: str, run_filter: run_service_pb2.RunFilter) -> int:
    client = run_service_connect.RunServiceClient(endpoint, http_client=direct_http())
    answer = await client.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_filter, pagination=types_pb2.PaginationRequest(limit=1)
        )
    )
    return answer.pagination.total_count


async def some_run(endpoint: str, status: types_pb2.RunStatus) -> types_pb2.Run:
    client = run_service_connect.RunServiceClient(endpoint, http_client=direct_http())
    answer = await client.list_runs(
        run_service_pb2.ListRunsRequest(
            filter=run_service_pb2.RunFilter(statuses=[status]),
            pagination=types_pb2.PaginationRequest(limit=1),
        )
    )
    assert answer.runs, f"the demo data has no run with status {status}"
    return answer.runs[0]


# --------------------------------------------------------------------------- streams


async def test_watch_runs_snapshot_covers_every_subsystem(stack: Stack) -> None:
    expected = sum(
        [
            await direct_total(endpoint, run_service_pb2.RunFilter())
            for endpoint in stack.endpoints.values()
        ]
    )
    events = await read_until(
        gateway_streams(stack).watch_runs(
            stream_service_pb2.WatchRunsRequest(include_initial_snapshot=True)
        ),
        lambda seen: len(seen) >= expected,
        20,
        "the initial snapshot",
    )
    assert len({event.run.id for event in events}) == expected
    assert {event.run.subsystem_id for event in events} == set(SUBSYSTEMS)
    assert {event.event_type for event in events} == {stream_service_pb2.RUN_EVENT_TYPE_CREATED}


async def test_watch_runs_narrows_by_subsystem(stack: Stack) -> None:
    expected = await direct_total(stack.endpoints["payments"], run_service_pb2.RunFilter())
    events = await read_until(
        gateway_streams(stack).watch_runs(
            stream_service_pb2.WatchRunsRequest(
                include_initial_snapshot=True, subsystem_ids=["payments"]
            )
        ),
        lambda seen: len(seen) >= expected,
        20,
        "the payments snapshot",
    )
    assert {event.run.subsystem_id for event in events} == {"payments"}


async def test_an_action_through_the_gateway_shows_up_on_watch_runs(stack: Stack) -> None:
    target = await some_run(stack.endpoints["payments"], types_pb2.RUN_STATUS_RUNNING)
    request = stream_service_pb2.WatchRunsRequest(
        include_initial_snapshot=True,
        workflow_ids=[target.workflow_id],
        subsystem_ids=["payments"],
    )
    runs_client = run_service_connect.RunServiceClient(
        stack.gateway.url, http_client=http2_client(), send_compression=None
    )
    cancelled = False
    actions: list[asyncio.Future[run_service_pb2.CancelRunResponse]] = []

    def done(seen: list[stream_service_pb2.RunEvent]) -> bool:
        nonlocal cancelled
        last = seen[-1]
        if last.run.id == target.id and not cancelled:
            # The snapshot reached the target: the upstream stream is open; act now.
            cancelled = True
            actions.append(
                asyncio.ensure_future(
                    runs_client.cancel_run(run_service_pb2.CancelRunRequest(run_id=target.id))
                )
            )
        return (
            last.run.id == target.id
            and last.event_type == stream_service_pb2.RUN_EVENT_TYPE_COMPLETED
        )

    events = await read_until(
        gateway_streams(stack).watch_runs(request), done, 20, "the cancellation event"
    )
    assert events[-1].run.status == types_pb2.RUN_STATUS_CANCELED
    await actions[0]


async def test_watch_run_relays_the_owners_stream(stack: Stack) -> None:
    target = await some_run(stack.endpoints["orders"], types_pb2.RUN_STATUS_RUNNING)
    runs_client = run_service_connect.RunServiceClient(
        stack.gateway.url, http_client=http2_client(), send_compression=None
    )
    paused = False
    actions: list[asyncio.Future[run_service_pb2.PauseRunResponse]] = []

    def done(seen: list[stream_service_pb2.RunDetailEvent]) -> bool:
        nonlocal paused
        if not paused:
            paused = True
            actions.append(
                asyncio.ensure_future(
                    runs_client.pause_run(run_service_pb2.PauseRunRequest(run_id=target.id))
                )
            )
        return seen[-1].run.status == types_pb2.RUN_STATUS_PAUSED

    events = await read_until(
        gateway_streams(stack).watch_run(stream_service_pb2.WatchRunRequest(run_id=target.id)),
        done,
        15,
        "the pause event",
    )
    assert events[0].run.id == target.id
    assert events[0].run.status == types_pb2.RUN_STATUS_RUNNING
    assert all(event.run.id == target.id for event in events)
    await actions[0]


async def test_watch_run_of_an_unknown_run_is_not_found(stack: Stack) -> None:
    with pytest.raises(ConnectError) as caught:
        await read_until(
            gateway_streams(stack).watch_run(
                stream_service_pb2.WatchRunRequest(run_id="no-such-run")
            ),
            lambda seen: True,
            10,
            "an answer",
        )
    assert caught.value.code == Code.NOT_FOUND


async def test_watch_stats_sums_the_subsystems(stack: Stack) -> None:
    request = stream_service_pb2.WatchStatsRequest(interval_seconds=1)
    direct = []
    for endpoint in stack.endpoints.values():
        client = stream_service_connect.StreamServiceClient(endpoint, http_client=direct_http())
        (first,) = await read_until(
            client.watch_stats(request), lambda seen: True, 10, "a direct snapshot"
        )
        direct.append(first)
    merged = await read_until(
        gateway_streams(stack).watch_stats(request),
        lambda seen: len(seen) >= 2,
        10,
        "two merged snapshots",
    )
    # The demos' clocks stand still, so nothing changes between the two readings.
    for snapshot in merged:
        assert snapshot.running == sum(d.running for d in direct)
        assert snapshot.paused == sum(d.paused for d in direct)
        succeeded = sum(d.succeeded_last_minute for d in direct)
        failed = sum(d.failed_last_minute for d in direct)
        assert (snapshot.succeeded_last_minute, snapshot.failed_last_minute) == (succeeded, failed)
        assert snapshot.rate_per_minute == pytest.approx(sum(d.rate_per_minute for d in direct))
        expected_rate = failed / (succeeded + failed) if succeeded + failed else 0.0
        assert snapshot.error_rate == pytest.approx(expected_rate)
    assert merged[1].timestamp.ToNanoseconds() > merged[0].timestamp.ToNanoseconds()


async def test_watch_stats_rejects_a_negative_interval(stack: Stack) -> None:
    with pytest.raises(ConnectError) as caught:
        await read_until(
            gateway_streams(stack).watch_stats(
                stream_service_pb2.WatchStatsRequest(interval_seconds=-1)
            ),
            lambda seen: True,
            10,
            "an answer",
        )
    assert caught.value.code == Code.INVALID_ARGUMENT


def established_connections(port: int) -> int:
    """Server-side TCP connections on a loopback port (IPv4), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":
            count += 1
    return count


async def test_clients_going_away_close_the_upstream_streams(stack: Stack) -> None:
    """Idle WatchRuns streams (nothing happens after the snapshot) are closed upstream
    as soon as their clients leave: the gateway notices the disconnect itself rather
    than at its next send (see asgi_guard.py)."""
    port = int(stack.endpoints["orders"].rsplit(":", 1)[1])
    streams = gateway_streams(stack)
    opened = 4

    async def watch_forever(started: asyncio.Event) -> None:
        try:
            async for _ in streams.watch_runs(
                stream_service_pb2.WatchRunsRequest(
                    include_initial_snapshot=True, subsystem_ids=["orders"]
                )
            ):
                started.set()
        except ConnectError as exc:  # how connectrpc reports the cancellation below
            if exc.code != Code.CANCELED:
                raise

    starts = [asyncio.Event() for _ in range(opened)]
    readers = [asyncio.ensure_future(watch_forever(started)) for started in starts]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), 10)
        # Each open gateway stream holds an HTTP/1.1 connection to the subsystem
        # (idle pooled connections may be among them).
        during = established_connections(port)
        assert during >= opened
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.wait(readers)
        for reader in readers:
            if not reader.cancelled():
                assert reader.exception() is None
    wait_until(
        lambda: established_connections(port) <= during - opened + 1,
        10,
        "the gateway to close its upstream streams",
    )
    # And the gateway keeps serving streams.
    events = await read_until(
        streams.watch_runs(
            stream_service_pb2.WatchRunsRequest(
                include_initial_snapshot=True, subsystem_ids=["orders"]
            )
        ),
        lambda seen: True,
        10,
        "a stream after the disconnects",
    )
    assert events[0].run.subsystem_id == "orders"


# --------------------------------------------------------------------------- search


async def direct_search_all(
    stack: Stack, query: str
) -> dict[str, search_service_pb2.SearchResponse]:
    return {
        sid: await direct_search(endpoint).search(
            search_service_pb2.SearchRequest(
                query=query, pagination=types_pb2.PaginationRequest(limit=100)
            )
        )
        for sid, endpoint in stack.endpoints.items()
    }


async def page_search(
    client: search_service_connect.SearchServiceClient, query: str, limit: int
) -> tuple[list[search_service_pb2.SearchResult], search_service_pb2.SearchResponse]:
    seen: list[search_service_pb2.SearchResult] = []
    cursor = ""
    first = None
    for _ in range(50):
        answer = await client.search(
            search_service_pb2.SearchRequest(
                query=query, pagination=types_pb2.PaginationRequest(limit=limit, cursor=cursor)
            )
        )
        first = first or answer
        assert len(answer.results) <= limit
        seen += answer.results
        cursor = answer.pagination.next_cursor
        if not cursor:
            assert first is not None
            return seen, first
    raise AssertionError("search paging did not end")


async def test_search_merges_and_pages_without_duplicates(stack: Stack) -> None:
    query = "status:failed retry"
    direct = await direct_search_all(stack, query)
    assert all(answer.results for answer in direct.values()), "pick a query both subsystems match"
    seen, first = await page_search(gateway_search(stack), query, 8)
    ids = [result.id for result in seen]
    assert len(ids) == len(set(ids))
    assert set(ids) == {r.id for answer in direct.values() for r in answer.results}
    scores = [result.score for result in seen]
    assert scores == sorted(scores, reverse=True)
    assert first.pagination.total_count == sum(a.pagination.total_count for a in direct.values())
    expected_workflows: Counter[str] = Counter()
    for answer in direct.values():
        expected_workflows.update(dict(answer.facets.workflow))
    assert dict(first.facets.workflow) == dict(expected_workflows)


async def test_search_paging_stops_at_the_window(stack: Stack) -> None:
    query = "check"
    direct = await direct_search_all(stack, query)
    seen, first = await page_search(gateway_search(stack), query, 30)
    assert len(seen) == 100 and len({r.id for r in seen}) == 100
    best = sorted((r.score for a in direct.values() for r in a.results), reverse=True)[:100]
    assert [r.score for r in seen] == best
    assert first.pagination.total_count == sum(a.pagination.total_count for a in direct.values())


async def test_search_errors_keep_their_codes(stack: Stack) -> None:
    client = gateway_search(stack)
    with pytest.raises(ConnectError) as caught:
        await client.search(search_service_pb2.SearchRequest(query='"unclosed'))
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert "quote" in caught.value.message
    with pytest.raises(ConnectError) as caught:
        await client.search(
            search_service_pb2.SearchRequest(
                query="check", pagination=types_pb2.PaginationRequest(cursor="20")
            )
        )
    assert caught.value.code == Code.INVALID_ARGUMENT


async def test_suggest_explain_index_stats_and_reindex(stack: Stack) -> None:
    client = gateway_search(stack)
    directs = {sid: direct_search(endpoint) for sid, endpoint in stack.endpoints.items()}

    suggest = search_service_pb2.SuggestRequest(field="workflow", limit=100)
    counts: Counter[str] = Counter()
    for direct in directs.values():
        for s in (await direct.suggest(suggest)).suggestions:
            counts[s.value] += s.count
    expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    merged = await client.suggest(search_service_pb2.SuggestRequest(field="workflow", limit=3))
    assert [(s.value, s.count) for s in merged.suggestions] == expected
    assert ("health-check", counts["health-check"]) in [
        (s.value, s.count) for s in merged.suggestions
    ]

    explained = await client.explain(search_service_pb2.ExplainRequest(raw_query="status:failed x"))
    assert explained == await directs["orders"].explain(
        search_service_pb2.ExplainRequest(raw_query="status:failed x")
    )

    stats = await client.get_index_stats(search_service_pb2.GetIndexStatsRequest())
    each = [
        await d.get_index_stats(search_service_pb2.GetIndexStatsRequest()) for d in directs.values()
    ]
    assert stats.indexed_runs == sum(s.indexed_runs for s in each)
    assert stats.indexed_log_lines == sum(s.indexed_log_lines for s in each)

    everything = await client.reindex(search_service_pb2.ReindexRequest())
    assert everything.runs_queued == sum(
        [
            (await d.reindex(search_service_pb2.ReindexRequest())).runs_queued
            for d in directs.values()
        ]
    )
    only_orders = search_service_pb2.ReindexRequest(workflow_id="orders-intake")
    assert (await client.reindex(only_orders)).runs_queued == (
        await directs["orders"].reindex(only_orders)
    ).runs_queued
    with pytest.raises(ConnectError) as caught:
        await client.reindex(search_service_pb2.ReindexRequest(workflow_id="no-such-workflow"))
    assert caught.value.code == Code.NOT_FOUND
