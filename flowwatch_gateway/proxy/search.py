"""SearchService through the gateway: fan out, merge by score, page with a gateway cursor.

Explain asks one subsystem (parsing a query does not depend on data). A subsystem
answering `unimplemented` (no search engine) is left out rather than reported as a
failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import search_service_pb2 as search_pb
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy.fanout import (
    FanOut,
    Gathered,
    UpstreamCall,
    agreed_error,
    first_success,
    gather,
)
from flowwatch_gateway.proxy.merge import search as merge_search
from flowwatch_gateway.proxy.paging import CursorError
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry

__all__ = ["SearchProxy"]

T = TypeVar("T")


class SearchProxy:
    """The gateway's SearchService."""

    def __init__(self, registry: Registry, fan: FanOut, *, cursor_key: bytes) -> None:
        self._registry = registry
        self._secret = cursor_key
        self._fan = fan

    async def _gather_search(
        self,
        rpc: str,
        ctx: CallContext,
        call: UpstreamCall[T],
        ids: Iterable[str] | None = None,
        *,
        absent_codes: tuple[Code, ...] = (Code.UNIMPLEMENTED,),
    ) -> dict[str, T]:
        """Fan out; subsystems answering one of `absent_codes` simply have nothing to add.

        No connected subsystem means an empty answer, as for every list.
        """
        wanted = None if ids is None else list(ids)
        targets = self._fan.connected(ctx, wanted)
        self._fan.note_stale(ctx, wanted)
        if not targets:
            return {}
        result: Gathered[T] = await gather(targets, call, self._fan.budget(ctx))
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

    async def search(
        self, request: search_pb.SearchRequest, ctx: CallContext
    ) -> search_pb.SearchResponse:
        try:
            page = merge_search.plan_search_page(request, secret=self._secret)
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
        return merge_search.merge_search(answers, page, secret=self._secret)

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

        targets = self._fan.targets("Explain", ctx)
        outcome = await first_success(targets, call, self._fan.budget(ctx))
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
        # Reindexing changes a subsystem's state: only where the caller may act.
        everyone = owners if owners is not None else [i.id for i in self._registry.instances()]
        owners = [iid for iid in everyone if ctx.scope.may_act(iid)]
        return merge_search.merge_reindex(
            await self._gather_search("Reindex", ctx, call, owners, absent_codes=absent)
        )
