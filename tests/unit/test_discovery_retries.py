"""Discovery retries of a subsystem that does not listen: a TCP check, not an HTTP probe.

Real sockets on loopback: a port nobody listens on, then a listener that appears.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest
from connectrpc.interceptor import MetadataInterceptor
from connectrpc.request import RequestContext

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2
from flowwatch_gateway.processes import free_port
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.upstream import (
    HttpMode,
    SharedTransports,
    UpstreamClients,
    tcp_listening,
    tcp_refused_now,
)
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy
from flowwatch_gateway.registry.memory import InMemoryRegistry

pytestmark = pytest.mark.anyio


class CountingProbes(MetadataInterceptor[None]):
    """Counts the HTTP requests the gateway's clients start (probes, discovery)."""

    def __init__(self) -> None:
        self.started = 0

    async def on_start(self, ctx: RequestContext[object, object]) -> None:
        self.started += 1

    async def on_end(
        self, token: None, ctx: RequestContext[object, object], error: Exception | None
    ) -> None:
        return None


async def test_tcp_listening_tells_a_listener_from_a_closed_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert await tcp_listening(f"127.0.0.1:{port}")
    assert not await tcp_listening(f"127.0.0.1:{free_port()}")
    assert not await tcp_listening(f"[::1]:{free_port()}")


def test_a_refusal_on_loopback_is_known_at_once() -> None:
    assert tcp_refused_now(f"127.0.0.1:{free_port()}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        # Accepted (or still connecting): not a refusal.
        assert not tcp_refused_now(f"127.0.0.1:{listener.getsockname()[1]}")
    assert tcp_refused_now("not an address:80")


async def test_retries_while_refused_wait_for_nothing() -> None:
    """Each retry after the first probe is a refused connect from the timer itself:
    the awaited TCP check (and a task to await it in) is never needed."""
    counts = {"refused_now": 0, "listening": 0}
    transports = SharedTransports(EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 1)))

    def counted(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        clients = transports.connect(instance_id, endpoint, mode)

        def refused_now() -> bool:
            counts["refused_now"] += 1
            return clients.refused_now()

        async def listening() -> bool:
            counts["listening"] += 1
            return await clients.listening()

        return dataclasses.replace(clients, refused_now=refused_now, listening=listening)

    registry = InMemoryRegistry()
    pool = UpstreamPool(registry, timeout_s=1.0, connect=counted, retry_s=(0.02, 0.05))
    request = gateway_service_pb2.RegisterRequest(
        subsystem_id="late", flowwatch_endpoint=f"http://127.0.0.1:{free_port()}"
    )
    try:
        registry.register(request)
        await asyncio.sleep(0.6)
        assert counts["refused_now"] >= 5
        assert counts["listening"] == 0
    finally:
        await pool.aclose()
        await transports.aclose()


async def test_a_subsystem_that_does_not_listen_is_probed_over_http_once() -> None:
    probes = CountingProbes()
    transports = SharedTransports(
        EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 1)),
        interceptors=lambda subsystem_id: [probes],
    )
    registry = InMemoryRegistry()
    pool = UpstreamPool(registry, timeout_s=1.0, connect=transports.connect, retry_s=(0.02, 0.05))
    port = free_port()
    request = gateway_service_pb2.RegisterRequest(
        subsystem_id="late", flowwatch_endpoint=f"http://127.0.0.1:{port}"
    )
    try:
        registry.register(request)
        await asyncio.sleep(1.0)  # the first probe and about twenty retries
        # One HTTP probe (h2c; a refused connect is not tried again over HTTP/1.1);
        # every retry after it found nothing listening with a TCP connect alone.
        assert probes.started == 1
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen(8)
            for _ in range(100):
                if probes.started > 1:
                    break
                await asyncio.sleep(0.02)
            # Something listens now: the next retry probes over HTTP again.
            assert probes.started > 1
    finally:
        await pool.aclose()
        await transports.aclose()


async def test_retries_fall_due_on_a_shared_grid() -> None:
    """Retries of many subsystems share wake-ups of the event loop: each is due on
    the pool's grid (here the first delay, 0.2 s), whatever its jitter."""
    grid = 0.2
    loop = asyncio.get_running_loop()
    checked_at: list[float] = []
    transports = SharedTransports(EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 1)))

    def counted(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        clients = transports.connect(instance_id, endpoint, mode)

        def refused_now() -> bool:
            checked_at.append(loop.time())
            return clients.refused_now()

        return dataclasses.replace(clients, refused_now=refused_now)

    registry = InMemoryRegistry()
    pool = UpstreamPool(registry, timeout_s=1.0, connect=counted, retry_s=(grid, grid))
    try:
        for n in range(20):
            registry.register(
                gateway_service_pb2.RegisterRequest(
                    subsystem_id=f"s{n}", flowwatch_endpoint=f"http://127.0.0.1:{free_port()}"
                )
            )
        await asyncio.sleep(1.0)
        assert len(checked_at) >= 20
        # A timer may run late on a loaded machine, but not by half a slot (the
        # microsecond absorbs a multiple of 0.2 that floats put just below it).
        past_slot = sorted((t + 1e-6) % grid for t in checked_at)
        assert past_slot[-1] < grid / 2, past_slot
    finally:
        await pool.aclose()
        await transports.aclose()
