"""Fixtures that start real gateway processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.harness import TEST_API_KEY, GatewayProcess, start_gateway

# Short intervals keep heartbeat/grace behaviour observable within a fast suite.
FAST_HEARTBEAT = "200ms"
FAST_GRACE = "1s"


@pytest.fixture(scope="module")
def fast_gateway() -> Iterator[GatewayProcess]:
    """A pyvoy gateway with 200 ms heartbeats, 1 s grace and an API key, shared per module."""
    with start_gateway(
        "--heartbeat",
        FAST_HEARTBEAT,
        "--grace-period",
        FAST_GRACE,
        "--api-key",
        TEST_API_KEY,
    ) as gateway:
        yield gateway
