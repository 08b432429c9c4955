"""AnalyticsService through the gateway: ask the subsystems a filter concerns, merge.

A subsystem filter naming one subsystem, or a workflow only some subsystems own,
narrows who is asked (an answer from one subsystem is exact). Counts add exactly;
percentiles are merged approximately and the answer says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.proxy.fanout import FanOut
from flowwatch_gateway.proxy.merge import analytics as merge
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry

__all__ = ["AnalyticsProxy"]

T = TypeVar("T")

_FilteredRequest = (
    analytics.GetThroughputRequest
    | analytics.GetFailureRateRequest
    | analytics.GetStepHeatmapRequest
    | analytics.GetLatencyRequest
)


class AnalyticsProxy:
    """The gateway's AnalyticsService."""

    def __init__(self, registry: Registry, fan: FanOut) -> None:
        self._registry = registry
        self._fan = fan

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

    async def get_throughput(
        self, request: analytics.GetThroughputRequest, ctx: CallContext
    ) -> analytics.GetThroughputResponse:
        answers = await self._ask(
            "GetThroughput", request, ctx, lambda c: c.analytics.get_throughput
        )
        return merge.merge_throughput(answers)

    async def get_failure_rate(
        self, request: analytics.GetFailureRateRequest, ctx: CallContext
    ) -> analytics.GetFailureRateResponse:
        answers = await self._ask(
            "GetFailureRate", request, ctx, lambda c: c.analytics.get_failure_rate
        )
        return merge.merge_failure_rate(answers)

    async def get_step_heatmap(
        self, request: analytics.GetStepHeatmapRequest, ctx: CallContext
    ) -> analytics.GetStepHeatmapResponse:
        answers = await self._ask(
            "GetStepHeatmap", request, ctx, lambda c: c.analytics.get_step_heatmap
        )
        return merge.merge_heatmap(answers)

    async def get_latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext
    ) -> analytics.GetLatencyResponse:
        """Latency percentiles, with run counts per bucket fetched alongside as weights."""

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

        scope = self._scope(request.filter.subsystem_id, request.filter.workflow_id)
        answers = await self._fan.gather("GetLatency", ctx, call, scope)
        weights = merge.throughput_weights({iid: tp for iid, (_, tp) in answers.items()})
        merged, approximate = merge.merge_latency(
            {iid: latency for iid, (latency, _) in answers.items()}, weights
        )
        if approximate:
            ctx.mark_approximate("run-weighted-mean-of-instance-percentiles")
        return merged

    async def get_step_duration(
        self, request: analytics.GetStepDurationRequest, ctx: CallContext
    ) -> analytics.GetStepDurationResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> analytics.GetStepDurationResponse:
            return await c.analytics.get_step_duration(request, timeout_ms=timeout_ms)

        scope = self._scope("", request.workflow_id)
        merged, approximate = merge.merge_step_duration(
            await self._fan.gather("GetStepDuration", ctx, call, scope)
        )
        if approximate:
            ctx.mark_approximate("sample-weighted-mean-of-instance-percentiles")
        return merged
