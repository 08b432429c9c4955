"""The gateway's FlowWatch API: the per-service proxies composed over one pool and router.

Each FlowWatch service has its own thin module (workflows, runs, analytics, streams,
search); they share the upstream pool (clients and discovery), the fan-out helper
(whom to ask, deadlines, partial failures), the rules of per-run calls (who owns a
run, per_run.py) and the workflow router. `Gateway.backends()` is what the Connect
service layer serves.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence

from connectrpc.interceptor import Interceptor

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.proxy.analytics import AnalyticsProxy
from flowwatch_gateway.proxy.fanout import FanOut
from flowwatch_gateway.proxy.per_run import ActionLog, PerRunCalls
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.router import Router
from flowwatch_gateway.proxy.runs import RunsProxy
from flowwatch_gateway.proxy.search import SearchProxy
from flowwatch_gateway.proxy.streams import StreamsProxy
from flowwatch_gateway.proxy.upstream import Connect, SharedTransports
from flowwatch_gateway.proxy.workflows import WorkflowsProxy
from flowwatch_gateway.registry.base import Registry
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy

__all__ = ["Gateway"]


class Gateway:
    """Proxies the FlowWatch API to the subsystems in the registry."""

    def __init__(
        self,
        registry: Registry,
        config: GatewayConfig,
        *,
        connect: Connect | None = None,
        endpoint_policy: EndpointPolicy | None = None,
        interceptors: Callable[[str], Sequence[Interceptor]] | None = None,
        actions: ActionLog | None = None,
    ) -> None:
        """`connect` replaces the network (tests); by default clients share real transports,
        which check every call's endpoint against `endpoint_policy` when one is given;
        `interceptors` observe every upstream call (by subsystem id); `actions` records
        every action attempt (the audit trail)."""
        self.endpoint_checker = (
            None if endpoint_policy is None else EndpointChecker(endpoint_policy)
        )
        self._transports = SharedTransports(self.endpoint_checker, interceptors=interceptors)
        self.pool = UpstreamPool(
            registry,
            timeout_s=config.upstream_timeout,
            connect=connect or self._transports.connect,
        )
        fan = FanOut(registry, self.pool, config.upstream_timeout, config.fanout_concurrency)
        self.per_run = PerRunCalls(registry, self.pool, fan, config.run_cache_size, actions)
        router = Router(registry, fan)
        # Signs every cursor; random unless the operator shares one between replicas.
        cursor_key = config.cursor_key.encode() or secrets.token_bytes(32)
        self.workflows = WorkflowsProxy(registry, fan, router, self.per_run, cursor_key=cursor_key)
        self.runs = RunsProxy(registry, self.pool, fan, self.per_run, cursor_key=cursor_key)
        self.analytics = AnalyticsProxy(
            registry, fan, exact_max_runs=config.exact_analytics_max_runs
        )
        self.streams = StreamsProxy(
            registry, self.pool, fan, self.per_run, poll_interval_s=config.watch_poll_interval
        )
        self.search = SearchProxy(registry, fan, cursor_key=cursor_key)

    def backends(self) -> Mapping[str, object]:
        """Each FlowWatch service's implementation, by service name."""
        return {
            "WorkflowService": self.workflows,
            "RunService": self.runs,
            "AnalyticsService": self.analytics,
            "StreamService": self.streams,
            "SearchService": self.search,
        }

    async def aclose(self) -> None:
        """Stop background work and close every upstream connection."""
        await self.pool.aclose()
        await self._transports.aclose()
