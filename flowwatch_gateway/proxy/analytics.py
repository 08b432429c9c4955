"""AnalyticsService through the gateway: ask the subsystems a filter concerns, merge.

A subsystem filter naming one subsystem, or a workflow only some subsystems own,
narrows who is asked (an answer from one subsystem is exact). Counts add exactly.
Percentiles are merged with the best method the subsystems allow (see
merge/summaries.py): their sketches when every contributor sent one; for latency,
the exact durations of the runs of subsystems without sketches, listed with
ListRuns when the window holds at most `exact_max_runs` of them; else a flagged
weighted mean. Every answer names its method in the `flowwatch-analytics-method`
header (approximate ones also in `flowwatch-approximate`).

Answers are cached briefly per (rpc, request, subsystem set), so dashboards polling
the same window do not refetch everything: an entry lives `cache_ttl` seconds at
most and never past the next bucket boundary (when the current bucket closes, a
new one opens and the answer changes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import PARTIAL_FAILURE_HEADER, CallContext
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.proxy import exact
from flowwatch_gateway.proxy.fanout import FanOut
from flowwatch_gateway.proxy.merge import analytics as merge
from flowwatch_gateway.proxy.merge import summaries
from flowwatch_gateway.proxy.merge.summaries import EXACT, Method
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry

__all__ = ["DEFAULT_CACHE_TTL_S", "DEFAULT_EXACT_MAX_RUNS", "AnalyticsProxy"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_EXACT_MAX_RUNS = 20_000
DEFAULT_CACHE_TTL_S = 5.0
# Subsystems listed at once for exact latency (each pages one request at a time).
LIST_CONCURRENCY = 8
CACHE_ENTRIES = 256
NS = 1_000_000_000
GRANULARITY_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
DEFAULT_GRANULARITY = "1h"
# GetStepDuration has no granularity; subsystems trend it hourly.
STEP_DURATION_BUCKET_S = 3600

_FilteredRequest = (
    analytics.GetThroughputRequest
    | analytics.GetFailureRateRequest
    | analytics.GetStepHeatmapRequest
    | analytics.GetLatencyRequest
)


@dataclass(frozen=True)
class _Entry:
    response: object
    headers: dict[str, str]
    expires: float


class AnalyticsProxy:
    """The gateway's AnalyticsService."""

    def __init__(
        self,
        registry: Registry,
        fan: FanOut,
        *,
        exact_max_runs: int = DEFAULT_EXACT_MAX_RUNS,
        cache_ttl: float = DEFAULT_CACHE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is wall time in seconds: bucket boundaries are wall-clock instants."""
        self._registry = registry
        self._fan = fan
        self._exact_max_runs = exact_max_runs
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._answers: OrderedDict[tuple[object, ...], _Entry] = OrderedDict()
        self.durations = exact.DurationCache()

    # --- whom to ask, and the answer cache ---------------------------------------------

    def _scope(self, subsystem_id: str, workflow_id: str) -> list[str] | None:
        """The subsystems an analytics question concerns (None = all)."""
        every = {inst.id for inst in self._registry.instances()}
        if subsystem_id and subsystem_id in every:
            return [subsystem_id]
        if workflow_id:
            owners = [iid for iid in self._registry.workflow_owners(workflow_id) if iid in every]
            if owners:
                return owners
        return None

    def _scope_key(
        self, scope: list[str] | None, ctx: CallContext
    ) -> tuple[tuple[str, int, bool], ...]:
        """Who would be asked: a new registration or a stale one is another question, and
        so is a caller who may read other subsystems."""
        wanted = None if scope is None else set(scope)
        return tuple(
            sorted(
                (inst.id, inst.epoch, inst.connected)
                for inst in self._registry.instances()
                if (wanted is None or inst.id in wanted) and ctx.scope.may_read(inst.id)
            )
        )

    async def _cached(
        self,
        rpc: str,
        request: _FilteredRequest | analytics.GetStepDurationRequest,
        ctx: CallContext,
        scope: list[str] | None,
        bucket_s: int,
        compute: Callable[[], Awaitable[R]],
    ) -> R:
        """`compute()`'s answer, or a recent one for the same question, headers included."""
        key = (rpc, request.SerializeToString(deterministic=True), self._scope_key(scope, ctx))
        now = self._clock()
        entry = self._answers.get(key)
        if entry is not None and now < entry.expires:
            self._answers.move_to_end(key)
            ctx.response_headers.update(entry.headers)
            return entry.response  # type: ignore[return-value]  # stored by this rpc
        before = dict(ctx.response_headers)
        response = await compute()
        if PARTIAL_FAILURE_HEADER in ctx.response_headers:
            return response  # missing data: ask again next time rather than repeat it
        next_boundary = (now // bucket_s + 1) * bucket_s
        headers = {k: v for k, v in ctx.response_headers.items() if before.get(k) != v}
        self._answers[key] = _Entry(response, headers, min(now + self._cache_ttl, next_boundary))
        self._answers.move_to_end(key)
        while len(self._answers) > CACHE_ENTRIES:
            self._answers.popitem(last=False)
        return response

    @staticmethod
    def _report(ctx: CallContext, method: Method) -> None:
        ctx.mark_analytics_method(method.header())
        if method.kind == "approximate":
            ctx.mark_approximate(method.reason)

    async def _ask(
        self,
        rpc: str,
        request: _FilteredRequest,
        ctx: CallContext,
        method: Callable[[UpstreamClients], Callable[..., Awaitable[T]]],
    ) -> dict[str, T]:
        """Ask the subsystems the request's filter concerns; answers by subsystem id."""

        async def call(c: UpstreamClients, timeout_ms: int) -> T:
            return await method(c)(request, timeout_ms=timeout_ms)

        scope = self._scope(request.filter.subsystem_id, request.filter.workflow_id)
        return await self._fan.gather(rpc, ctx, call, scope)

    @staticmethod
    def _bucket_s(request: _FilteredRequest) -> int:
        return GRANULARITY_SECONDS.get(request.filter.granularity or DEFAULT_GRANULARITY, 60)

    def _filtered_scope(self, request: _FilteredRequest) -> list[str] | None:
        return self._scope(request.filter.subsystem_id, request.filter.workflow_id)

    # --- counts: add exactly -----------------------------------------------------------

    async def _counts(
        self,
        rpc: str,
        request: _FilteredRequest,
        ctx: CallContext,
        method: Callable[[UpstreamClients], Callable[..., Awaitable[T]]],
        merged: Callable[[dict[str, T]], R],
    ) -> R:
        """Counts add exactly: ask, merge, say so (cached like every analytics answer)."""

        async def compute() -> R:
            answers = await self._ask(rpc, request, ctx, method)
            self._report(ctx, EXACT)
            return merged(answers)

        scope = self._filtered_scope(request)
        return await self._cached(rpc, request, ctx, scope, self._bucket_s(request), compute)

    async def get_throughput(
        self, request: analytics.GetThroughputRequest, ctx: CallContext
    ) -> analytics.GetThroughputResponse:
        return await self._counts(
            "GetThroughput",
            request,
            ctx,
            lambda c: c.analytics.get_throughput,
            merge.merge_throughput,
        )

    async def get_failure_rate(
        self, request: analytics.GetFailureRateRequest, ctx: CallContext
    ) -> analytics.GetFailureRateResponse:
        return await self._counts(
            "GetFailureRate",
            request,
            ctx,
            lambda c: c.analytics.get_failure_rate,
            merge.merge_failure_rate,
        )

    async def get_step_heatmap(
        self, request: analytics.GetStepHeatmapRequest, ctx: CallContext
    ) -> analytics.GetStepHeatmapResponse:
        async def compute() -> analytics.GetStepHeatmapResponse:
            answers = await self._ask(
                "GetStepHeatmap", request, ctx, lambda c: c.analytics.get_step_heatmap
            )
            merged, method = summaries.merge_heatmap_summaries(answers)
            self._report(ctx, method)
            return merged

        return await self._cached(
            "GetStepHeatmap",
            request,
            ctx,
            self._filtered_scope(request),
            self._bucket_s(request),
            compute,
        )

    # --- percentiles ---------------------------------------------------------------------

    async def get_latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext
    ) -> analytics.GetLatencyResponse:
        scope = self._filtered_scope(request)
        return await self._cached(
            "GetLatency",
            request,
            ctx,
            scope,
            self._bucket_s(request),
            lambda: self._latency(request, ctx, scope),
        )

    async def _latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext, scope: list[str] | None
    ) -> analytics.GetLatencyResponse:
        """Latency with run counts per bucket fetched alongside (weights and the budget)."""

        async def call(
            c: UpstreamClients, timeout_ms: int
        ) -> tuple[analytics.GetLatencyResponse, analytics.GetThroughputResponse]:
            latency, throughput = await asyncio.gather(
                c.analytics.get_latency(request, timeout_ms=timeout_ms),
                c.analytics.get_throughput(
                    analytics.GetThroughputRequest(filter=request.filter), timeout_ms=timeout_ms
                ),
            )
            return latency, throughput

        answers = await self._fan.gather("GetLatency", ctx, call, scope)
        latencies = {iid: latency for iid, (latency, _) in answers.items()}
        throughputs = {iid: throughput for iid, (_, throughput) in answers.items()}
        candidates = summaries.latency_listing_candidates(latencies)
        listed: dict[str, dict[int, list[int]]] = {}
        reason = "no-sketch"
        if candidates:
            listed, reason = await self._exact_durations(
                request.filter, ctx, candidates, latencies, throughputs
            )
        merged, method = summaries.merge_latency_summaries(
            latencies, merge.throughput_weights(throughputs), listed, reason
        )
        self._report(ctx, method)
        return merged

    async def _exact_durations(
        self,
        analytics_filter: analytics.AnalyticsFilter,
        ctx: CallContext,
        candidates: set[str],
        latencies: Mapping[str, analytics.GetLatencyResponse],
        throughputs: Mapping[str, analytics.GetThroughputResponse],
    ) -> tuple[dict[str, dict[int, list[int]]], str]:
        """Exact durations per bucket of the candidates' finished runs, and why not if not.

        Returns ({}, reason) when the runs to list exceed the budget; subsystems whose
        listing fails are left out (their buckets fall back) and named in the reason.
        """
        granularity = analytics_filter.granularity or DEFAULT_GRANULARITY
        if granularity not in GRANULARITY_SECONDS:
            return {}, "unknown-granularity"
        bucket_ns = GRANULARITY_SECONDS[granularity] * NS
        starts = sorted(
            {int(b.timestamp.ToNanoseconds()) for r in latencies.values() for b in r.buckets}
        )
        if not starts:
            return {}, "no-buckets"
        time_range = analytics_filter.time_range
        # Without a range the subsystems' own "last 24 h" applies; their buckets bound
        # it and trim_edges drops what they did not count.
        if time_range.HasField("from"):
            from_ns = int(getattr(time_range, "from").ToNanoseconds())
        else:
            from_ns = starts[0]
        to_ns = int(time_range.to.ToNanoseconds()) if time_range.HasField("to") else 0
        to_ns = to_ns or starts[-1] + bucket_ns
        began_ns = int(self._clock() * NS)

        plans: dict[str, exact.ListingPlan] = {}
        counts: dict[str, dict[int, exact.BucketCounts]] = {}
        for instance_id in sorted(candidates):
            connected = self._fan.connected(ctx, [instance_id])
            instance = self._registry.get(instance_id)
            if not connected or instance is None:
                continue
            counts[instance_id] = exact.bucket_counts(throughputs[instance_id])
            plan = plans[instance_id] = exact.ListingPlan(connected[0], instance.epoch)
            for start in starts:
                known = counts[instance_id].get(start)
                if known is not None and known.finished == 0:
                    continue
                cached = self.durations.get(
                    self._duration_key(instance_id, plan.epoch, analytics_filter, bucket_ns, start)
                )
                if (
                    cached is not None
                    and known is not None
                    and known.unfinished == 0
                    and len(cached) == known.finished
                ):
                    plan.cached[start] = list(cached)
                else:
                    plan.fetch.append(start)

        to_fetch = sum(plan.runs_to_fetch(counts[iid]) for iid, plan in plans.items())
        if to_fetch > self._exact_max_runs:
            return {}, f"exact-budget-exceeded:{to_fetch}>{self._exact_max_runs}-runs"

        semaphore = asyncio.Semaphore(LIST_CONCURRENCY)
        timeout_ms = self._fan.timeout_ms(ctx)
        fetching = {iid: plan for iid, plan in plans.items() if plan.fetch}
        outcomes = await asyncio.gather(
            *(
                exact.list_durations(
                    plan.instance,
                    ranges=plan.ranges(bucket_ns, from_ns, to_ns),
                    workflow_id=analytics_filter.workflow_id,
                    subsystem_id=analytics_filter.subsystem_id,
                    timeout_ms=timeout_ms,
                    max_runs=self._exact_max_runs,
                    semaphore=semaphore,
                )
                for plan in fetching.values()
            ),
            return_exceptions=True,
        )
        listed: dict[str, dict[int, list[int]]] = {
            iid: dict(plan.cached) for iid, plan in plans.items()
        }
        failed: list[str] = []
        for (instance_id, plan), outcome in zip(fetching.items(), outcomes, strict=True):
            if isinstance(outcome, ConnectError | OverflowError):
                log.warning("exact latency: listing runs of %s failed: %s", instance_id, outcome)
                failed.append(instance_id)
                del listed[instance_id]
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            fresh = exact.trim_edges(
                outcome,
                first_bucket=starts[0],
                last_bucket=starts[-1],
                bucket_ns=bucket_ns,
                counts=counts[instance_id],
            )
            listed[instance_id].update(fresh)
            for start in plan.fetch:
                known = counts[instance_id].get(start)
                values = fresh.get(start, [])
                stable = (
                    known is not None
                    and known.unfinished == 0
                    and len(values) == known.finished
                    and start + bucket_ns <= began_ns
                    and from_ns <= start  # a partial first bucket moves with the window
                    and start + bucket_ns <= to_ns
                )
                if stable:
                    key = self._duration_key(
                        instance_id, plan.epoch, analytics_filter, bucket_ns, start
                    )
                    self.durations.put(key, values)
        reason = f"run-listing-failed:{','.join(failed)}" if failed else "no-sketch"
        return listed, reason

    @staticmethod
    def _duration_key(
        instance_id: str,
        epoch: int,
        analytics_filter: analytics.AnalyticsFilter,
        bucket_ns: int,
        start: int,
    ) -> tuple[object, ...]:
        return (
            instance_id,
            epoch,
            analytics_filter.workflow_id,
            analytics_filter.subsystem_id,
            bucket_ns,
            start,
        )

    async def get_step_duration(
        self, request: analytics.GetStepDurationRequest, ctx: CallContext
    ) -> analytics.GetStepDurationResponse:
        scope = self._scope("", request.workflow_id)

        async def call(c: UpstreamClients, timeout_ms: int) -> analytics.GetStepDurationResponse:
            return await c.analytics.get_step_duration(request, timeout_ms=timeout_ms)

        async def compute() -> analytics.GetStepDurationResponse:
            answers = await self._fan.gather("GetStepDuration", ctx, call, scope)
            merged, method = summaries.merge_step_duration_summaries(answers)
            self._report(ctx, method)
            return merged

        return await self._cached(
            "GetStepDuration", request, ctx, scope, STEP_DURATION_BUCKET_S, compute
        )
