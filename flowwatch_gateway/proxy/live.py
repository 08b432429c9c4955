"""StreamService and SearchService through the gateway (mixed into `GatewayAdapter`).

Streams: WatchRuns and WatchStats open the same stream on every connected instance
and fan the events in through one queue as they arrive (no waiting for the slower
instances, so the first event - which is what makes a Connect stream send its
headers - is not delayed). WatchRun relays the stream of the run's owner. An
upstream stream that fails is logged and the others carry on; the call ends with an
error only when every upstream failed before anything was relayed. Instances that
register after a stream started are not added to it: the UI reconnects its streams
and then gets them. Upstream streams get no deadline of their own (only the
caller's, when it set one), and are closed when the gateway stops or the caller
goes away (the ASGI guard in asgi_guard.py reports a departed caller within a
second, even on a quiet stream).

Search: calls fan out and merge with `merge_search`; Explain asks one instance.
An instance answering `unimplemented` (no search engine) is left out rather than
reported as a failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.adapter import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy.fanout import (
    Gathered,
    all_failed_error,
    describe_failure,
    first_success,
    gather,
    routed_error,
)
from flowwatch_gateway.proxy.merge import search as merge_search
from flowwatch_gateway.proxy.paging import CursorError
from flowwatch_gateway.proxy.upstream import UpstreamClients

if TYPE_CHECKING:
    from flowwatch_gateway.proxy.owners import RunOwnerCache
    from flowwatch_gateway.registry.base import Registry

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_STATS_INTERVAL_S = 5
# Events buffered per fan-in before upstream readers wait for the caller to catch up.
FAN_IN_BUFFER = 256
STREAM_CLOSE_TIMEOUT_S = 2.0
# Codes with which an instance answers the request itself (rather than failing to);
# when every instance gives the same one, the caller gets it as it is.
_ANSWER_CODES = (
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.UNIMPLEMENTED,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
    Code.RESOURCE_EXHAUSTED,
)


def agreed_error(rpc: str, failures: Mapping[str, ConnectError]) -> ConnectError:
    """The error for a call no instance answered: their common answer, else unavailable."""
    codes = {exc.code for exc in failures.values()}
    if len(codes) == 1 and next(iter(codes)) in _ANSWER_CODES:
        instance_id = min(failures)
        return routed_error(instance_id, failures[instance_id])
    return all_failed_error(rpc, failures)


def stream_timeout_ms(ctx: CallContext) -> int | None:
    """Long-lived streams get the caller's deadline if it set one, and none otherwise."""
    remaining = ctx.remaining()
    return None if remaining is None else max(1, int(remaining * 1000))


@dataclass(frozen=True)
class _Ended:
    instance_id: str
    error: ConnectError | None


class StreamFanIn(Generic[T]):
    """One reader task per upstream stream, all feeding one queue.

    connectrpc turns a cancelled call into ConnectError(CANCELED); once `aclose`
    has begun such an end is expected and is neither reported nor waited on.
    """

    def __init__(
        self,
        rpc: str,
        targets: Sequence[UpstreamClients],
        open_stream: Callable[[UpstreamClients], AsyncIterator[T]],
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._rpc = rpc
        self._queue: asyncio.Queue[tuple[str, T] | _Ended] = asyncio.Queue()
        self._space = asyncio.Semaphore(FAN_IN_BUFFER)
        self._closing = False
        self.live: set[str] = {t.instance_id for t in targets}
        self.failures: dict[str, ConnectError] = {}
        self.delivered = False
        self._tasks = [asyncio.ensure_future(self._read(t, open_stream)) for t in targets]
        for task in self._tasks:
            track(task)

    async def _read(
        self, target: UpstreamClients, open_stream: Callable[[UpstreamClients], AsyncIterator[T]]
    ) -> None:
        error: ConnectError | None = None
        try:
            async for item in open_stream(target):
                await self._space.acquire()
                self._queue.put_nowait((target.instance_id, item))
        except ConnectError as exc:
            error = exc
        except Exception as exc:  # a bug or a decoding problem: this instance only
            log.exception("%s: stream from %s failed unexpectedly", self._rpc, target.instance_id)
            error = ConnectError(Code.INTERNAL, "unexpected error reading the subsystem stream")
            error.__cause__ = exc
        if not self._closing:
            self._queue.put_nowait(_Ended(target.instance_id, error))

    async def next(self, timeout_s: float | None = None) -> tuple[str, T] | None:
        """The next (instance id, event); None when `timeout_s` passed first.

        Raises StopAsyncIteration when every upstream stream has ended.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if not self.live and self._queue.empty():
                raise StopAsyncIteration
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                return None
            if isinstance(item, _Ended):
                self._ended(item)
                continue
            self._space.release()
            self.delivered = True
            return item

    def _ended(self, ended: _Ended) -> None:
        self.live.discard(ended.instance_id)
        if ended.error is None:
            log.info("%s: stream from %s ended", self._rpc, ended.instance_id)
            return
        self.failures[ended.instance_id] = ended.error
        log.warning(
            "%s: stream from %s failed: %s (%s)",
            self._rpc,
            ended.instance_id,
            describe_failure(ended.error),
            ended.error.message,
        )

    def error_if_nothing_delivered(self) -> ConnectError | None:
        """After every stream ended: an error only if all failed before any event."""
        if self.delivered or not self.failures:
            return None
        if len(self.failures) < len(self._tasks):
            return None  # some ended cleanly: an empty stream is a fair answer
        return agreed_error(self._rpc, self.failures)

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STREAM_CLOSE_TIMEOUT_S)
            if still:
                log.warning(
                    "%s: %d upstream stream(s) did not stop within %ss",
                    self._rpc,
                    len(still),
                    STREAM_CLOSE_TIMEOUT_S,
                )


class LiveProxyMixin:
    """The gateway's StreamService and SearchService; needs GatewayAdapter's members."""

    if TYPE_CHECKING:
        _registry: Registry
        _owners: RunOwnerCache
        _clients: dict[str, UpstreamClients]
        _background: set[asyncio.Task[None]]

        def _connected(self, ids: Iterable[str] | None = None) -> list[UpstreamClients]: ...

        def _note_stale(self, ctx: CallContext, ids: Iterable[str] | None = None) -> None: ...

        def _timeout_ms(self, ctx: CallContext) -> int: ...

        def _list_targets(self, run_filter: runs.RunFilter) -> list[str]: ...

        async def _on_run_owner(
            self,
            rpc: str,
            run_id: str,
            ctx: CallContext,
            call: Callable[[UpstreamClients, int], Awaitable[T]],
        ) -> tuple[str, T]: ...

    # --- helpers ----------------------------------------------------------------------
    def _track(self, task: asyncio.Task[None]) -> None:
        """Reader tasks join the adapter's background set, so that aclose() stops them."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _stream_targets(
        self, rpc: str, ctx: CallContext, ids: Iterable[str] | None = None
    ) -> list[UpstreamClients]:
        ids = None if ids is None else list(ids)
        targets = self._connected(ids)
        self._note_stale(ctx, ids)
        if not targets:
            raise ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem is connected to the gateway")
        return targets

    def _report_early_failures(self, fan_in: StreamFanIn[T], ctx: CallContext) -> None:
        """Put the failures so far into the response headers. Called before every event:
        the headers go out with the first one (or with the error), so failures after
        that can only be logged."""
        for instance_id, exc in fan_in.failures.items():
            if exc.code != Code.UNIMPLEMENTED:
                ctx.add_partial_failure(instance_id, describe_failure(exc))

    async def _gather_search(
        self,
        rpc: str,
        ctx: CallContext,
        call: Callable[[UpstreamClients, int], Awaitable[T]],
        ids: Iterable[str] | None = None,
        *,
        absent_codes: tuple[Code, ...] = (Code.UNIMPLEMENTED,),
    ) -> dict[str, T]:
        """Fan out; instances answering one of `absent_codes` simply have nothing to add."""
        targets = self._stream_targets(rpc, ctx, ids)
        result: Gathered[T] = await gather(targets, call, self._timeout_ms(ctx))
        if not result.answers:
            raise agreed_error(rpc, result.failures)
        reported: Gathered[T] = Gathered(
            answers=result.answers,
            failures={
                iid: exc for iid, exc in result.failures.items() if exc.code not in absent_codes
            },
        )
        reported.report(ctx, rpc)
        return result.answers

    # --- StreamService ----------------------------------------------------------------
    async def watch_runs(
        self, request: stream.WatchRunsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunEvent]:
        wanted = self._list_targets(runs.RunFilter(subsystem_ids=request.subsystem_ids))
        targets = self._stream_targets("WatchRuns", ctx, wanted)
        timeout_ms = stream_timeout_ms(ctx)

        def open_stream(c: UpstreamClients) -> AsyncIterator[stream.RunEvent]:
            return c.stream.watch_runs(request, timeout_ms=timeout_ms)

        fan_in = StreamFanIn("WatchRuns", targets, open_stream, self._track)
        try:
            while True:
                try:
                    found = await fan_in.next()
                except StopAsyncIteration:
                    break
                if found is None:
                    continue
                instance_id, event = found
                if event.run.id:
                    self._owners.put(event.run.id, instance_id)
                self._report_early_failures(fan_in, ctx)
                yield event
            self._report_early_failures(fan_in, ctx)
            error = fan_in.error_if_nothing_delivered()
            if error is not None:
                raise error
        finally:
            await fan_in.aclose()

    async def watch_run(
        self, request: stream.WatchRunRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunDetailEvent]:
        async def probe(c: UpstreamClients, timeout_ms: int) -> runs.GetRunResponse:
            return await c.runs.get_run(
                runs.GetRunRequest(run_id=request.run_id), timeout_ms=timeout_ms
            )

        owner, _ = await self._on_run_owner("WatchRun", request.run_id, ctx, probe)
        clients = self._clients.get(owner)
        if clients is None:  # removed while being probed
            raise ConnectError(Code.UNAVAILABLE, f"subsystem {owner} is no longer connected")
        timeout_ms = stream_timeout_ms(ctx)

        def open_stream(c: UpstreamClients) -> AsyncIterator[stream.RunDetailEvent]:
            return c.stream.watch_run(request, timeout_ms=timeout_ms)

        fan_in = StreamFanIn("WatchRun", [clients], open_stream, self._track)
        try:
            while True:
                try:
                    found = await fan_in.next()
                except StopAsyncIteration:
                    break
                if found is not None:
                    yield found[1]
            failure = fan_in.failures.get(owner)
            if failure is not None and failure.code != Code.CANCELED:
                raise routed_error(owner, failure)
        finally:
            await fan_in.aclose()

    async def watch_stats(
        self, request: stream.WatchStatsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.StatsSnapshot]:
        """A merged snapshot whenever every instance has sent a new one, or each interval.

        Each instance's latest snapshot counts until its stream ends; then it drops out.
        """
        if request.interval_seconds < 0:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"WatchStats: interval_seconds must be at least 1 (0 means the default "
                f"{DEFAULT_STATS_INTERVAL_S}); got {request.interval_seconds}",
            )
        interval = request.interval_seconds or DEFAULT_STATS_INTERVAL_S
        targets = self._stream_targets("WatchStats", ctx)
        timeout_ms = stream_timeout_ms(ctx)

        def open_stream(c: UpstreamClients) -> AsyncIterator[stream.StatsSnapshot]:
            return c.stream.watch_stats(request, timeout_ms=timeout_ms)

        fan_in = StreamFanIn("WatchStats", targets, open_stream, self._track)
        latest: dict[str, stream.StatsSnapshot] = {}
        fresh: set[str] = set()
        next_tick = time.monotonic() + interval
        try:
            while True:
                try:
                    found = await fan_in.next(max(0.0, next_tick - time.monotonic()))
                except StopAsyncIteration:
                    break
                if found is not None:
                    latest[found[0]] = found[1]
                    fresh.add(found[0])
                for gone in set(latest) - fan_in.live:
                    del latest[gone]
                    fresh.discard(gone)
                round_complete = bool(latest) and fan_in.live <= fresh
                if round_complete or (found is None and latest):
                    self._report_early_failures(fan_in, ctx)
                    yield merge_search.merge_stats(latest.values(), datetime.now(UTC))
                    fresh.clear()
                    next_tick = time.monotonic() + interval
                elif found is None:
                    next_tick = time.monotonic() + interval
            self._report_early_failures(fan_in, ctx)
            error = fan_in.error_if_nothing_delivered()
            if error is not None:
                raise error
        finally:
            await fan_in.aclose()

    # --- SearchService ----------------------------------------------------------------
    async def search(
        self, request: search_pb.SearchRequest, ctx: CallContext
    ) -> search_pb.SearchResponse:
        try:
            page = merge_search.plan_search_page(request)
        except CursorError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"Search: {exc.message}") from None
        upstream = search_pb.SearchRequest(
            query=request.query,
            scope=request.scope,
            time_range=request.time_range,
            pagination=types.PaginationRequest(limit=page.upstream_limit),
        )

        async def call(c: UpstreamClients, timeout_ms: int) -> search_pb.SearchResponse:
            return await c.search.search(upstream, timeout_ms=timeout_ms)

        answers = await self._gather_search("Search", ctx, call)
        for instance_id, answer in answers.items():
            self._owners.put_many((r.run_id, instance_id) for r in answer.results if r.run_id)
        return merge_search.merge_search(answers, page)

    async def suggest(
        self, request: search_pb.SuggestRequest, ctx: CallContext
    ) -> search_pb.SuggestResponse:
        limit = merge_search.suggestion_limit(request.limit)
        # Each instance's full top list: a value just below one instance's cut can still
        # add up to a top value overall.
        upstream = search_pb.SuggestRequest(
            field=request.field, prefix=request.prefix, limit=merge_search.MAX_SUGGESTIONS
        )

        async def call(c: UpstreamClients, timeout_ms: int) -> search_pb.SuggestResponse:
            return await c.search.suggest(upstream, timeout_ms=timeout_ms)

        return merge_search.merge_suggestions(
            await self._gather_search("Suggest", ctx, call), limit
        )

    async def explain(
        self, request: search_pb.ExplainRequest, ctx: CallContext
    ) -> search_pb.ExplainResponse:
        """Parsing a query does not depend on data: any one instance's answer will do."""

        async def call(c: UpstreamClients, timeout_ms: int) -> search_pb.ExplainResponse:
            return await c.search.explain(request, timeout_ms=timeout_ms)

        targets = self._stream_targets("Explain", ctx)
        outcome = await first_success(targets, call, self._timeout_ms(ctx))
        if isinstance(outcome, dict):
            raise agreed_error("Explain", outcome)
        return outcome[1]

    async def get_index_stats(
        self, request: search_pb.GetIndexStatsRequest, ctx: CallContext
    ) -> search_pb.GetIndexStatsResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> search_pb.GetIndexStatsResponse:
            return await c.search.get_index_stats(request, timeout_ms=timeout_ms)

        return merge_search.merge_index_stats(await self._gather_search("GetIndexStats", ctx, call))

    async def reindex(
        self, request: search_pb.ReindexRequest, ctx: CallContext
    ) -> search_pb.ReindexResponse:
        """Only the workflow's owners when it is known; elsewhere "not found" just means 0."""

        async def call(c: UpstreamClients, timeout_ms: int) -> search_pb.ReindexResponse:
            return await c.search.reindex(request, timeout_ms=timeout_ms)

        owners: list[str] | None = None
        absent: tuple[Code, ...] = (Code.UNIMPLEMENTED,)
        if request.workflow_id:
            owners = self._registry.workflow_owners(request.workflow_id) or None
            absent = (Code.UNIMPLEMENTED, Code.NOT_FOUND)
        return merge_search.merge_reindex(
            await self._gather_search("Reindex", ctx, call, owners, absent_codes=absent)
        )
