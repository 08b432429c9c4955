"""Fixtures for every test. Process and client helpers live in tests/support/harness.py;
fixtures that start real processes live in tests/e2e/conftest.py."""

from __future__ import annotations

import pytest

from flowwatch_gateway import exit_guard

# pyqwest can abort the test process during interpreter finalization (see exit_guard).
exit_guard.install()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
