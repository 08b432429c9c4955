"""Processes that used pyqwest exit 0 (pyqwest 0.12 can abort at interpreter exit).

Without flowwatch_gateway.exit_guard a small client like this one aborted (exit 134)
in 5-18 % of runs on this machine; the guard is installed by importing the upstream
module, as the gateway and the subsystem client do.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest

from tests.support.upstreams import start_demo_server

RUNS = 25

CLIENT = """
import asyncio, sys
import pyqwest
from flowwatch_gateway.proxy.upstream import SharedTransports
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2

async def main(endpoint):
    transports = SharedTransports()
    clients = transports.connect("bench", endpoint, "http1")
    requests = [clients.workflows.get_capabilities(workflow_service_pb2.GetCapabilitiesRequest())
                for _ in range(20)]
    await asyncio.gather(*requests)
    await transports.aclose()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.slow
def test_pyqwest_clients_exit_zero_every_time() -> None:
    server, endpoint = start_demo_server("orders", 1, datetime.now(UTC))
    try:
        codes = [
            subprocess.run(
                [sys.executable, "-c", CLIENT, endpoint], capture_output=True, timeout=60
            ).returncode
            for _ in range(RUNS)
        ]
    finally:
        server.close()
    assert codes == [0] * RUNS
