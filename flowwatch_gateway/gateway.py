"""The gateway's FlowWatch adapter (provisional): answers from the registry alone.

Serves what the gateway knows without asking any subsystem: the subsystem list, one
subsystem, and the union of the connected subsystems' capabilities. Every other rpc
keeps EngineAdapter's `unimplemented` until the proxy replaces this module.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.timestamp_pb2 import Timestamp

from flowwatch_gateway.adapter import CallContext, EngineAdapter
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.registry import Registry, SubsystemInstance

# Metadata keys the gateway adds to every SubsystemSummary so the UI can show liveness.
STATE_KEY = "gateway.state"
LAST_HEARTBEAT_KEY = "gateway.last_heartbeat"
ENDPOINT_KEY = "gateway.endpoint"
INSTANCE_KEY = "gateway.instance"


class GatewayAdapter(EngineAdapter):
    def __init__(self, registry: Registry, config: GatewayConfig) -> None:
        self._registry = registry
        self._config = config

    async def list_subsystems(
        self, request: wf.ListSubsystemsRequest, ctx: CallContext
    ) -> wf.ListSubsystemsResponse:
        # Stale subsystems are listed (marked by gateway.state): hiding them would make a
        # crashed subsystem look as if it had never existed.
        return wf.ListSubsystemsResponse(
            subsystems=[subsystem_summary(i) for i in self._registry.instances()]
        )

    async def get_subsystem(
        self, request: wf.GetSubsystemRequest, ctx: CallContext
    ) -> wf.GetSubsystemResponse:
        instance = self._registry.get(request.subsystem_id)
        if instance is None:
            raise ConnectError(
                Code.NOT_FOUND,
                f"subsystem {request.subsystem_id!r} is not registered with this gateway",
            )
        return wf.GetSubsystemResponse(
            subsystem=subsystem_summary(instance), workflows=instance.workflows
        )

    async def get_capabilities(
        self, request: wf.GetCapabilitiesRequest, ctx: CallContext
    ) -> wf.GetCapabilitiesResponse:
        announced = [i.capabilities for i in self._registry.connected() if i.capabilities]
        return wf.GetCapabilitiesResponse(capabilities=merge_capabilities(announced))


def subsystem_summary(instance: SubsystemInstance) -> wf.SubsystemSummary:
    metadata = dict(instance.metadata)
    metadata[STATE_KEY] = instance.state.value
    metadata[LAST_HEARTBEAT_KEY] = _rfc3339(instance)
    metadata[ENDPOINT_KEY] = instance.endpoint
    metadata[INSTANCE_KEY] = instance.registration_id
    created_at = Timestamp()
    created_at.FromDatetime(instance.registered_at)
    return wf.SubsystemSummary(
        subsystem=types_pb2.Subsystem(
            id=instance.id,
            name=instance.name,
            description=instance.description,
            metadata=metadata,
            created_at=created_at,
        ),
        workflow_count=len(instance.workflows),
    )


def _rfc3339(instance: SubsystemInstance) -> str:
    stamp = Timestamp()
    stamp.FromDatetime(instance.last_heartbeat)
    return stamp.ToJsonString()


def merge_capabilities(announced: list[types_pb2.Capabilities]) -> types_pb2.Capabilities:
    """What the UI may offer when any connected subsystem supports it.

    Actions are per run, and the proxy routes each to the subsystem owning the run, so
    one capable subsystem is enough to show the action. Search limits take the most
    generous subsystem; engines and scopes are listed once each.
    """
    merged = types_pb2.Capabilities()
    for flag in (
        "retry_run",
        "retry_from_step",
        "cancel_run",
        "pause_run",
        "resume_run",
        "skip_step",
        "streaming",
        "analytics",
    ):
        setattr(merged, flag, any(getattr(c, flag) for c in announced))
    searchable = [c.search for c in announced if c.search.enabled]
    if searchable:
        search = merged.search
        search.enabled = True
        search.engine = ", ".join(sorted({s.engine for s in searchable if s.engine}))
        scopes: list[str] = []
        for s in searchable:
            scopes.extend(scope for scope in s.scopes if scope not in scopes)
        search.scopes.extend(scopes)
        search.query_language = any(s.query_language for s in searchable)
        search.max_results = max(s.max_results for s in searchable)
        search.payload_indexed = any(s.payload_indexed for s in searchable)
        search.log_indexed = any(s.log_indexed for s in searchable)
        search.log_retention_days = max(s.log_retention_days for s in searchable)
        search.payload_retention_days = max(s.payload_retention_days for s in searchable)
    return merged
