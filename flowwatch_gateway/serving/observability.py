"""Everything an operator sees of one gateway app, wired in one place for create_app.

Metrics (metrics.py), the status page (status.py), the API-call and upstream hooks
(observe.py) and where the operator pages are served (operator.py): create_app
builds one `Observability`, hands its hooks to the RegisterService and the Gateway,
puts its middleware in front of CORS and starts/stops its listener in the lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from connectrpc.interceptor import Interceptor
from starlette.middleware import Middleware

from flowwatch_gateway.config import GatewayConfig, parse_addr
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2,
    run_service_pb2,
    search_service_pb2,
    stream_service_pb2,
    workflow_service_pb2,
)
from flowwatch_gateway.proxy.owners import RunOwnerCache
from flowwatch_gateway.registry.base import Clock, Registry
from flowwatch_gateway.serving.metrics import GatewayMetrics
from flowwatch_gateway.serving.observe import ObserveApiCalls, upstream_observers
from flowwatch_gateway.serving.operator import OperatorPages, Page, serve_operator_pages
from flowwatch_gateway.serving.status import GatewayFacts, UpstreamHealth, render_status_page

__all__ = ["Observability", "api_rpc_paths"]

HTML = "text/html; charset=utf-8"
LISTENER_CLOSE_TIMEOUT_S = 2.0


def api_rpc_paths() -> dict[str, str]:
    """Request path -> rpc name for every FlowWatch API method the gateway serves."""
    paths = {}
    for module in (
        workflow_service_pb2,
        run_service_pb2,
        analytics_service_pb2,
        stream_service_pb2,
        search_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                paths[f"/{service.full_name}/{method.name}"] = method.name
    return paths


class Observability:
    """Metrics, upstream health and the operator pages of one app."""

    def __init__(
        self,
        registry: Registry,
        config: GatewayConfig,
        clock: Clock,
        readiness: Callable[[], str],
    ) -> None:
        self._registry = registry
        self._config = config
        self._clock = clock
        self._readiness = readiness
        self._started = time.monotonic()
        self.health = UpstreamHealth(registry, clock)
        self.metrics = GatewayMetrics(registry, self.health)
        self._listener: asyncio.Server | None = None

    @property
    def upstream_interceptors(self) -> Callable[[str], Sequence[Interceptor]]:
        """For Gateway(interceptors=...): the observer of one subsystem's calls."""
        return upstream_observers(self.metrics)

    def watch_owner_cache(self, owners: RunOwnerCache) -> None:
        self.metrics.watch_owner_cache(owners)

    def pages(self) -> dict[str, Page]:
        return {"/metrics": self.metrics.exposition, "/status": self.status_page}

    def status_page(self) -> tuple[str, bytes]:
        facts = GatewayFacts(
            version=self.metrics.version,
            uptime_s=time.monotonic() - self._started,
            readiness=self._readiness(),
            configuration=self._config.masked_items(),
        )
        page = render_status_page(self._registry.instances(), self.health, self._clock, facts)
        return HTML, page.encode()

    def middleware(self) -> list[Middleware]:
        """In front of CORS: operator pages (never with CORS headers), then API-call hooks.

        With GATEWAY_METRICS_ADDR, /metrics lives on that listener only; /status stays
        on the main port as well.
        """
        pages = self.pages()
        if self._config.metrics_addr:
            del pages["/metrics"]
        return [
            Middleware(OperatorPages, pages=pages),
            Middleware(
                ObserveApiCalls,
                rpcs=api_rpc_paths(),
                sink=self.metrics,
                propagate_trace=self._config.trace_propagation,
            ),
        ]

    async def start(self) -> None:
        """Open the GATEWAY_METRICS_ADDR listener, when one is configured."""
        if self._config.metrics_addr:
            address = parse_addr(self._config.metrics_addr)
            self._listener = await serve_operator_pages(
                address["host"], address["port"], self.pages()
            )

    async def stop(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), LISTENER_CLOSE_TIMEOUT_S)
