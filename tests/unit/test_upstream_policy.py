"""Every upstream call is checked against the endpoint policy, not only registration."""

from __future__ import annotations

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.upstream import SharedTransports
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy, parse_host_rules

pytestmark = pytest.mark.anyio


async def test_a_refused_endpoint_is_never_dialed_and_the_call_is_unavailable() -> None:
    policy = EndpointPolicy.for_listener(
        "127.0.0.1", 8091, deny=parse_host_rules("127.0.0.77,blocked.example")
    )
    transports = SharedTransports(EndpointChecker(policy))
    try:
        for endpoint in ("http://169.254.169.254", "http://127.0.0.77:9", "http://127.0.0.1:8091"):
            clients = transports.connect("s", endpoint)
            with pytest.raises(ConnectError) as refused:
                await clients.workflows.get_capabilities(wf.GetCapabilitiesRequest())
            # unavailable, so a broadcast goes on with the other subsystems
            assert refused.value.code == Code.UNAVAILABLE
            assert "is refused" in refused.value.message
    finally:
        await transports.aclose()


async def test_an_allowed_endpoint_reaches_the_network() -> None:
    policy = EndpointPolicy.for_listener("127.0.0.1", 8091)
    transports = SharedTransports(EndpointChecker(policy))
    try:
        clients = transports.connect("s", "http://127.0.0.1:9")  # nothing listens on port 9
        with pytest.raises(ConnectError) as failed:
            await clients.workflows.get_capabilities(wf.GetCapabilitiesRequest(), timeout_ms=2000)
        # It was dialed (the socket refused it), not refused by the policy.
        assert "is refused" not in failed.value.message
        assert "tcp connect error" in failed.value.message
    finally:
        await transports.aclose()


async def test_the_dial_address_is_the_checked_one() -> None:
    checker = EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 8091))
    assert await checker.dial_address("http://127.0.0.1:9000") == "127.0.0.1:9000"
    assert await checker.dial_address("http://[::1]:9000/") == "[::1]:9000"
    assert await checker.dial_address("http://127.0.0.2") == "127.0.0.2:80"
    # A name is dialed at an address it resolved to, which the policy then checked.
    assert await checker.dial_address("http://localhost:9000") in ("127.0.0.1:9000", "[::1]:9000")
    assert await checker.dial_address("http://no-such-host.invalid:9000") is None


async def test_a_refused_endpoint_has_no_dial_address() -> None:
    policy = EndpointPolicy.for_listener("127.0.0.1", 8091, deny=parse_host_rules("127.0.0.77"))
    checker = EndpointChecker(policy)
    for endpoint in ("http://127.0.0.77:9000", "http://169.254.169.254", "http://127.0.0.1:8091"):
        with pytest.raises(ConnectError) as refused:
            await checker.dial_address(endpoint)
        assert refused.value.code == Code.PERMISSION_DENIED


async def test_the_dial_address_is_known_at_once_only_without_a_lookup() -> None:
    policy = EndpointPolicy.for_listener("127.0.0.1", 8091, deny=parse_host_rules("127.0.0.77"))
    checker = EndpointChecker(policy, cache_ttl=0.0)  # nothing stays fresh
    # An IP host needs no lookup: its verdict is worked out (and kept) on the spot.
    assert checker.dial_address_now("http://127.0.0.1:9000") == "127.0.0.1:9000"
    assert checker.dial_address_now("http://[::1]:9000") == "[::1]:9000"
    # Refused: no address, now or later.
    assert checker.dial_address_now("http://127.0.0.77:9000") is None
    with pytest.raises(ConnectError):
        await checker.dial_address("http://127.0.0.77:9000")
    # A name needs a lookup unless a fresh verdict is at hand.
    assert checker.dial_address_now("http://localhost:9000") is None
    cached = EndpointChecker(policy)
    resolved = await cached.dial_address("http://localhost:9000")
    assert resolved is not None
    assert cached.dial_address_now("http://localhost:9000") == resolved
