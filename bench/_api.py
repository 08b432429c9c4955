"""The FlowWatch API as the benchmarks call it, and waiting for a gateway to catch up.

Generated Connect clients over pyqwest h2c without compression: both the gateway and
the subsystems are reached exactly the way the gateway itself reaches subsystems, so
a difference between the two is the gateway's own work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import _common
import pyqwest
from connectrpc.client import ResponseMetadata
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import PARTIAL_FAILURE_HEADER
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_connect,
    run_service_connect,
    run_service_pb2,
    types_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)
from flowwatch_gateway.proxy.merge.catalog import META_STATE

DISCOVERY_TIMEOUT_SECONDS = 60.0
CALL_TIMEOUT_MS = 30_000


class FlowWatchApi:
    """Generated Connect clients (pyqwest h2c, no compression) for one FlowWatch endpoint."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self._transport = _common.h2c_transport()
        options: dict[str, Any] = {
            "http_client": pyqwest.Client(self._transport),
            "send_compression": None,
            "accept_compression": (),
            "timeout_ms": CALL_TIMEOUT_MS,
        }
        self.runs = run_service_connect.RunServiceClient(url, **options)
        self.workflows = workflow_service_connect.WorkflowServiceClient(url, **options)
        self.analytics = analytics_service_connect.AnalyticsServiceClient(url, **options)

    async def close(self) -> None:
        await self._transport.aclose()

    async def run_total(self) -> int:
        answer = await self.runs.list_runs(
            run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=1))
        )
        return answer.pagination.total_count

    async def workflow_total(self) -> int:
        answer = await self.workflows.list_workflows(
            workflow_service_pb2.ListWorkflowsRequest(
                pagination=types_pb2.PaginationRequest(limit=1)
            )
        )
        return answer.pagination.total_count


def without_partial_failure(
    api: FlowWatchApi, rpc: str, call: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """Fail the benchmark if an answer came back with a subsystem missing from it."""

    async def checked() -> None:
        with ResponseMetadata() as meta:
            await call()
        failed = meta.headers.get(PARTIAL_FAILURE_HEADER)
        if failed:
            raise RuntimeError(f"{rpc} via {api.name}: partial failure {failed!r}")

    return checked


async def connected_ids(gateway: FlowWatchApi) -> set[str]:
    answer = await gateway.workflows.list_subsystems(workflow_service_pb2.ListSubsystemsRequest())
    return {
        summary.subsystem.id
        for summary in answer.subsystems
        if summary.subsystem.metadata.get(META_STATE) == "connected"
    }


async def wait_until_discovered(gateway: FlowWatchApi, subsystems: Sequence[FlowWatchApi]) -> None:
    """All subsystems connected, and their workflows and capabilities known to the gateway.

    Discovery runs in the background after registration; timing before it finished
    would measure a gateway that is still catching up.
    """
    wanted_workflows = sum([await api.workflow_total() for api in subsystems])
    wanted_ids = {api.name for api in subsystems}
    deadline = time.monotonic() + DISCOVERY_TIMEOUT_SECONDS
    state = "nothing yet"
    while time.monotonic() < deadline:
        try:
            connected = await connected_ids(gateway)
            workflows = await gateway.workflow_total()
            capabilities = (
                await gateway.workflows.get_capabilities(
                    workflow_service_pb2.GetCapabilitiesRequest()
                )
            ).capabilities
        except ConnectError as exc:
            state = f"{exc.code.name}: {exc.message}"
        else:
            if connected == wanted_ids and workflows == wanted_workflows and capabilities.analytics:
                return
            state = (
                f"connected {sorted(connected)}, {workflows}/{wanted_workflows} workflows, "
                f"analytics {capabilities.analytics}"
            )
        await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway did not discover the subsystems in time: {state}")
