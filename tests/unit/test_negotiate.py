"""Settling a subsystem's HTTP version costs one refused connection, not two, when
nothing listens there yet."""

from __future__ import annotations

import pytest

from flowwatch_gateway.processes import free_port
from flowwatch_gateway.proxy.upstream import HttpMode, SharedTransports, UpstreamClients, negotiate

pytestmark = pytest.mark.anyio


async def test_a_refused_connection_is_not_tried_again_over_http1() -> None:
    transports = SharedTransports()
    made: list[HttpMode | None] = []

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        made.append(mode)
        return transports.connect(instance_id, endpoint, mode)

    try:
        clients = connect("s", f"http://127.0.0.1:{free_port()}", None)  # nothing listens
        kept, reachable = await negotiate(clients, connect)
        assert (kept, reachable) == (clients, False)
        assert made == [None]  # no HTTP/1.1 fallback was even built
    finally:
        await transports.aclose()
