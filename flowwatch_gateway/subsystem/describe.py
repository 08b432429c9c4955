"""What a subsystem announces when it registers, read from its own FlowWatch API."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import pyqwest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway.api.listing import list_all_workflows
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2, workflow_service_connect
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.subsystem.options import ClientOptions

__all__ = ["SubsystemDescription", "describe_local_subsystem"]

T = TypeVar("T")


@dataclass(frozen=True)
class SubsystemDescription:
    """What goes into a RegisterRequest besides identity, endpoint and key."""

    name: str
    description: str
    metadata: dict[str, str]
    workflows: list[types_pb2.WorkflowDefinition]
    capabilities: types_pb2.Capabilities | None


async def describe_local_subsystem(
    options: ClientOptions, http_client: pyqwest.Client
) -> SubsystemDescription:
    """Fill what the options leave open from the local FlowWatch API.

    An rpc the local server does not implement leaves its part empty (the gateway
    then asks the subsystem itself); any other error fails the attempt, since a
    subsystem whose API cannot be reached is of no use to the gateway either.
    """
    client = workflow_service_connect.WorkflowServiceClient(
        options.local_endpoint.rstrip("/"),
        http_client=http_client,
        protocol=ProtocolType.CONNECT,
        send_compression=None,
    )
    timeout_ms = round(options.local_timeout * 1000)

    workflows = list(options.workflows) if options.workflows is not None else None
    if workflows is None:
        workflows = await _unless_unimplemented(list_all_workflows(client, timeout_ms), [])

    capabilities = options.capabilities
    if capabilities is None:
        response: wf.GetCapabilitiesResponse | None = await _unless_unimplemented(
            client.get_capabilities(wf.GetCapabilitiesRequest(), timeout_ms=timeout_ms), None
        )
        if response is not None and response.HasField("capabilities"):
            capabilities = response.capabilities

    name, description = options.name, options.description
    metadata = dict(options.metadata) if options.metadata is not None else None
    if metadata is None:
        local = await _local_subsystem(client, options.subsystem_id, timeout_ms)
        if local is not None:
            name = name or local.name
            description = description or local.description
            if metadata is None:
                metadata = dict(local.metadata)
    return SubsystemDescription(
        name=name or options.subsystem_id,
        description=description,
        metadata=metadata or {},
        workflows=workflows,
        capabilities=capabilities,
    )


async def _local_subsystem(
    client: workflow_service_connect.WorkflowServiceClient, subsystem_id: str, timeout_ms: int
) -> types_pb2.Subsystem | None:
    try:
        response = await client.get_subsystem(
            wf.GetSubsystemRequest(subsystem_id=subsystem_id), timeout_ms=timeout_ms
        )
    except ConnectError as exc:
        # Servers without GetSubsystem, or that know themselves under another id.
        if exc.code in (Code.UNIMPLEMENTED, Code.NOT_FOUND):
            return None
        raise
    return response.subsystem.subsystem


async def _unless_unimplemented(call: Awaitable[T], fallback: T) -> T:
    try:
        return await call
    except ConnectError as exc:
        if exc.code == Code.UNIMPLEMENTED:
            return fallback
        raise
