"""RunService through the gateway: the merged run list, per-run calls and bulk actions.

ListRuns fans out and merges by keyset: the cursor holds the last run's sort key
(paging.py), each subsystem is read past it (run_reader.py), and a k-way merge picks
the page (merge/runs.py). Every run handed out names its subsystem.
The ten per-run rpcs are one table (per_run.py): each goes to the run's one owner,
by the rules PerRunCalls keeps for both serving paths. Bulk actions are split by
owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.message import Message

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.api.ordering import resolve_order, run_sort_key
from flowwatch_gateway.errors import UpstreamUnreached
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy import paging
from flowwatch_gateway.proxy.fanout import FanOut, gather, routed_error
from flowwatch_gateway.proxy.merge import runs as run_merge
from flowwatch_gateway.proxy.per_run import PER_RUN_RPCS, PerRunCalls, PerRunRpc
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.run_reader import MAX_PAGES, Page, Reading, read_after
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry, SubsystemInstance

__all__ = ["RunsProxy"]

_NOT_CONNECTED = UpstreamUnreached(Code.UNAVAILABLE, "not connected")


PerRunHandler = Callable[[Any, CallContext], Awaitable[Message]]
BulkCall = Callable[[UpstreamClients, list[str], int], Awaitable[Sequence[runs.BulkActionResult]]]


class RunsProxy:
    """The gateway's RunService; the per-run rpcs are bound from PER_RUN_RPCS."""

    # Bound in __init__ from PER_RUN_RPCS (named here for readers and type checkers).
    get_run: PerRunHandler
    get_run_steps: PerRunHandler
    get_run_timeline: PerRunHandler
    get_run_logs: PerRunHandler
    retry_run: PerRunHandler
    retry_from_step: PerRunHandler
    cancel_run: PerRunHandler
    pause_run: PerRunHandler
    resume_run: PerRunHandler
    skip_step: PerRunHandler

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        fan: FanOut,
        calls: PerRunCalls,
        *,
        cursor_key: bytes,
    ) -> None:
        self._registry = registry
        self._secret = cursor_key
        # Per subsystem: whether its pages came in order across a page boundary.
        self._page_order: dict[str, bool] = {}
        registry.add_listener(self)
        self._pool = pool
        self._fan = fan
        self._calls = calls
        for rpc in PER_RUN_RPCS:
            setattr(self, rpc.method, self._per_run_handler(rpc))

    # --- per-run calls ---------------------------------------------------------------
    def _per_run_handler(self, rpc: PerRunRpc) -> PerRunHandler:
        async def handle(request: Any, ctx: CallContext) -> Message:
            return await self._calls.call(rpc, request, ctx)

        handle.__name__ = rpc.method
        return handle

    # --- listing ---------------------------------------------------------------------
    def _list_targets(self, run_filter: runs.RunFilter, ctx: CallContext) -> list[str]:
        """subsystem_ids narrows the subsystems asked; ids no registration holds leave the
        filter upstream (a federated gateway's subsystems). Only what the caller may read."""
        every = [inst.id for inst in self._registry.instances()]
        named = [iid for iid in every if iid in set(run_filter.subsystem_ids)]
        return self._fan.readable(ctx, named or every)

    async def list_runs(
        self, request: runs.ListRunsRequest, ctx: CallContext
    ) -> runs.ListRunsResponse:
        """One page of every subsystem's runs merged in order (keyset paging, run_reader.py)."""
        field, descending = resolve_order(request.order_by, request.descending)
        limit = effective_page_size(request.pagination.limit)
        query = paging.query_fingerprint(request.filter, field, descending)
        state = paging.resume_cursor(request.pagination.cursor, query, secret=self._secret)
        after = None if state is None else state.after
        wanted = self._list_targets(request.filter, ctx)
        self._fan.note_stale(ctx, wanted)
        targets = self._fan.connected(ctx, wanted)
        upstream_filter = run_merge.narrow_filter(request.filter, field, descending, after)

        async def read(c: UpstreamClients, timeout_ms: int) -> Reading:
            async def fetch(cursor: str, page_limit: int) -> Page:
                upstream = runs.ListRunsRequest(
                    filter=upstream_filter,
                    pagination=types.PaginationRequest(cursor=cursor, limit=page_limit),
                    order_by=field,
                    descending=descending,
                )
                answer = await c.runs.list_runs(upstream, timeout_ms=timeout_ms)
                return Page(
                    [self._calls.stamp(run, c.instance_id) for run in answer.runs],
                    answer.pagination.next_cursor,
                    answer.pagination.total_count,
                )

            known = self._page_order.get(c.instance_id)
            return await read_after(fetch, after, limit, field, descending, known)

        result = await gather(targets, read, self._fan.budget(ctx))
        result.report(ctx, "ListRuns")
        result.raise_if_all_failed("ListRuns")
        for instance_id, reading in result.answers.items():
            if reading.ordered is not None:
                self._page_order[instance_id] = reading.ordered
            if reading.truncated:
                ctx.add_partial_failure(instance_id, f"more than {MAX_PAGES} pages out of order")
        parts = {iid: reading.part for iid, reading in result.answers.items()}
        for instance_id, part in parts.items():  # every row read is its sender's claim
            self._calls.claim(instance_id, (run.id for run in part.runs))
        emitted, more = run_merge.merge_after(parts, limit, field, descending)
        total = (
            sum(reading.total_count for reading in result.answers.values())
            if state is None
            else state.total
        )
        next_cursor = ""
        if more:
            last = run_sort_key(emitted[-1][1], field)
            next_cursor = paging.encode_cursor(
                paging.ListRunsCursor(query, last, total), secret=self._secret
            )
        return runs.ListRunsResponse(
            runs=[run for _, run in emitted],
            pagination=types.PaginationResponse(next_cursor=next_cursor, total_count=total),
        )

    # --- registry listener: what was learned of a subsystem's paging starts over ----
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        self._page_order.pop(instance.id, None)

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        self._page_order.pop(instance.id, None)

    # --- bulk actions ----------------------------------------------------------------
    async def _bulk(
        self, rpc: str, run_ids: Sequence[str], ctx: CallContext, call: BulkCall
    ) -> list[runs.BulkActionResult]:
        grouped, errors, owners = await self._calls.owners_of(rpc, run_ids, ctx)
        results: dict[str, runs.BulkActionResult] = {
            run_id: runs.BulkActionResult(run_id=run_id, success=False, error=exc.message)
            for run_id, exc in errors.items()
        }
        budget = self._fan.budget(ctx)
        slots = asyncio.Semaphore(budget.concurrency)

        async def on_instance(instance_id: str, ids: list[str]) -> None:
            clients = self._pool.get(instance_id)
            try:
                if clients is None:
                    raise _NOT_CONNECTED
                async with slots:
                    answered = await call(clients, ids, max(1, budget.remaining_ms()))
            except ConnectError as exc:
                reason = routed_error(instance_id, exc).message
                for run_id in ids:
                    results[run_id] = runs.BulkActionResult(
                        run_id=run_id, success=False, error=reason
                    )
                ctx.add_partial_failure(instance_id, reason)
                return
            asked = set(ids)
            for result in answered:
                if result.run_id in asked:  # an owner answers for the runs it was sent
                    results[result.run_id] = result

        await asyncio.gather(*(on_instance(iid, ids) for iid, ids in grouped.items()))
        merged = run_merge.merge_bulk_results(run_ids, results)
        for result in merged:  # one audit record per run id, allowed or not
            error = errors.get(result.run_id)
            if error is None and not result.success:
                error = ConnectError(Code.UNKNOWN, result.error)  # the owner's refusal
            self._calls.audit(ctx, rpc, result.run_id, owners.get(result.run_id), error)
        return merged

    async def bulk_retry(
        self, request: runs.BulkRetryRequest, ctx: CallContext
    ) -> runs.BulkRetryResponse:
        async def call(
            c: UpstreamClients, ids: list[str], timeout_ms: int
        ) -> Sequence[runs.BulkActionResult]:
            answer = await c.runs.bulk_retry(
                runs.BulkRetryRequest(run_ids=ids), timeout_ms=timeout_ms
            )
            return list(answer.results)

        return runs.BulkRetryResponse(
            results=await self._bulk("BulkRetry", request.run_ids, ctx, call)
        )

    async def bulk_cancel(
        self, request: runs.BulkCancelRequest, ctx: CallContext
    ) -> runs.BulkCancelResponse:
        async def call(
            c: UpstreamClients, ids: list[str], timeout_ms: int
        ) -> Sequence[runs.BulkActionResult]:
            answer = await c.runs.bulk_cancel(
                runs.BulkCancelRequest(run_ids=ids, reason=request.reason), timeout_ms=timeout_ms
            )
            return list(answer.results)

        return runs.BulkCancelResponse(
            results=await self._bulk("BulkCancel", request.run_ids, ctx, call)
        )
