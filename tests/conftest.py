"""Shared pytest fixtures. Process and client helpers live in tests/harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import GatewayProcess, start_gateway

from flowwatch_gateway import exit_guard

# pyqwest can abort the test process during interpreter finalization (see exit_guard).
exit_guard.install()

# Short intervals keep heartbeat/grace behaviour observable within a fast suite.
FAST_HEARTBEAT = "200ms"
FAST_GRACE = "1s"
TEST_API_KEY = "test-key-1234"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
