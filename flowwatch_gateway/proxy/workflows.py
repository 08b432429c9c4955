"""WorkflowService through the gateway: workflows, subsystems, traces, capabilities.

The workflow list and capabilities are what the registry already knows (announced
at registration or discovered right after), so listing them asks nobody. Workflow
lookups route by the registry's workflow index. The subsystem list is the gateway's
own view of its registrations merged with what each subsystem says of itself: never
an error for lack of answers, and a subsystem that cannot answer now is shown with
its last known stats, marked as such. Traces are stitched from every subsystem's part.
"""

from __future__ import annotations

from datetime import UTC, datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.fanout import FanOut, gather
from flowwatch_gateway.proxy.merge import catalog, trace
from flowwatch_gateway.proxy.paging import CursorError
from flowwatch_gateway.proxy.per_run import PerRunCalls
from flowwatch_gateway.proxy.router import Router
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry, SubsystemInstance
from flowwatch_gateway.urls import redact_url

__all__ = ["WorkflowsProxy"]


class WorkflowsProxy:
    """The gateway's WorkflowService."""

    def __init__(
        self,
        registry: Registry,
        fan: FanOut,
        router: Router,
        calls: PerRunCalls,
        *,
        cursor_key: bytes,
    ) -> None:
        self._registry = registry
        self._secret = cursor_key
        # Each subsystem's last ListSubsystems answer and when it came.
        self._last_seen: dict[str, tuple[datetime, wf.ListSubsystemsResponse]] = {}
        registry.add_listener(self)
        self._fan = fan
        self._router = router
        self._calls = calls

    # --- registry listener -------------------------------------------------------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        """A new registration starts without remembered stats of the one before."""
        self._last_seen.pop(instance.id, None)

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        self._last_seen.pop(instance.id, None)

    # --- WorkflowService -----------------------------------------------------------------
    async def list_workflows(
        self, request: wf.ListWorkflowsRequest, ctx: CallContext
    ) -> wf.ListWorkflowsResponse:
        known = {
            inst.id: wf.ListWorkflowsResponse(workflows=inst.workflows)
            for inst in self._registry.instances()
            if ctx.scope.may_read(inst.id)
        }
        merged = [definition for _, definition in catalog.merge_workflows(known)]
        try:
            page, next_cursor, total = catalog.paginate_list(
                merged, request.pagination.cursor, request.pagination.limit, secret=self._secret
            )
        except CursorError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"ListWorkflows: {exc.message}") from None
        return wf.ListWorkflowsResponse(
            workflows=page,
            pagination=types.PaginationResponse(next_cursor=next_cursor, total_count=total),
        )

    async def get_workflow(
        self, request: wf.GetWorkflowRequest, ctx: CallContext
    ) -> wf.GetWorkflowResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.GetWorkflowResponse:
            return await c.workflows.get_workflow(request, timeout_ms=timeout_ms)

        return await self._router.on_workflow_owner("GetWorkflow", request.workflow_id, ctx, call)

    async def get_graph(self, request: wf.GetGraphRequest, ctx: CallContext) -> wf.GetGraphResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.GetGraphResponse:
            return await c.workflows.get_graph(request, timeout_ms=timeout_ms)

        return await self._router.on_workflow_owner("GetGraph", request.workflow_id, ctx, call)

    def _instance_views(self, ctx: CallContext) -> list[catalog.InstanceView]:
        return [
            catalog.InstanceView(
                instance_id=inst.id,
                name=inst.name,
                description=inst.description,
                endpoint=redact_url(inst.endpoint),
                state=inst.state,
                last_heartbeat=inst.last_heartbeat,
                stale_since=inst.stale_since,
                registered_at=inst.registered_at,
                workflow_count=len(inst.workflows),
                metadata=dict(inst.metadata),
                registration_id=inst.registration_id,
            )
            for inst in self._registry.instances()
            if ctx.scope.may_read(inst.id)
        ]

    async def list_subsystems(
        self, request: wf.ListSubsystemsRequest, ctx: CallContext
    ) -> wf.ListSubsystemsResponse:
        return await self._subsystems(ctx)

    async def _subsystems(
        self, ctx: CallContext, only: str | None = None
    ) -> wf.ListSubsystemsResponse:
        """Every subsystem (or the registered one `only` names), merged with the registry.

        Never an error for lack of answers: the gateway's own view is the answer then.
        """

        async def call(c: UpstreamClients, timeout_ms: int) -> wf.ListSubsystemsResponse:
            return await c.workflows.list_subsystems(
                wf.ListSubsystemsRequest(), timeout_ms=timeout_ms
            )

        wanted = None if only is None else [only]
        self._fan.note_stale(ctx, wanted)
        result = await gather(self._fan.connected(ctx, wanted), call, self._fan.budget(ctx))
        result.report(ctx, "ListSubsystems")
        now = datetime.now(UTC)
        for instance_id, answer in result.answers.items():
            for summary in answer.subsystems:  # nobody speaks for another registration
                summary.subsystem.id = self._calls.named_id(instance_id, summary.subsystem.id)
            self._last_seen[instance_id] = (now, answer)
        views = [v for v in self._instance_views(ctx) if only is None or v.instance_id == only]
        remembered = {
            iid: seen
            for iid, seen in self._last_seen.items()
            if iid not in result.answers and ctx.scope.may_read(iid)
        }
        merged = catalog.merge_subsystems(result.answers, views, remembered)
        if not ctx.scope.admin:  # where a subsystem lives is for operators of the gateway
            for summary in merged.subsystems:
                summary.subsystem.metadata.pop(catalog.META_ENDPOINT, None)
        return merged

    async def get_subsystem(
        self, request: wf.GetSubsystemRequest, ctx: CallContext
    ) -> wf.GetSubsystemResponse:
        """A registered subsystem is asked alone; any other id may be a name some
        subsystem reports for itself, so then the whole list is consulted."""
        wanted = request.subsystem_id
        registered = self._registry.get(wanted) is not None
        if registered and not ctx.scope.may_read(wanted):
            raise ConnectError(
                Code.PERMISSION_DENIED,
                f"GetSubsystem: {ctx.scope.who} may not see subsystem {wanted!r} "
                "(GATEWAY_POLICY_FILE)",
            )
        overview = await self._subsystems(ctx, wanted if registered else None)
        summary = next((s for s in overview.subsystems if s.subsystem.id == wanted), None)
        if summary is None and registered and len(overview.subsystems) == 1:
            summary = overview.subsystems[0]  # it reports itself under another id
        if summary is None:
            raise ConnectError(Code.NOT_FOUND, f"subsystem {wanted!r} is not known to the gateway")
        members = summary.subsystem.metadata.get(catalog.META_INSTANCE, wanted).split(",")
        instance_ids = [wanted] if registered else members
        workflows = [
            definition
            for instance_id in instance_ids
            if (inst := self._registry.get(instance_id)) is not None
            for definition in inst.workflows
        ]
        return wf.GetSubsystemResponse(subsystem=summary, workflows=workflows)

    async def get_trace(self, request: wf.GetTraceRequest, ctx: CallContext) -> wf.GetTraceResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.GetTraceResponse:
            try:
                return await c.workflows.get_trace(request, timeout_ms=timeout_ms)
            except ConnectError as exc:
                if exc.code == Code.NOT_FOUND:
                    return wf.GetTraceResponse(trace_id=request.trace_id)  # no spans here
                raise

        answers = await self._fan.gather("GetTrace", ctx, call)
        for instance_id, answer in answers.items():
            for span in answer.spans:
                span.subsystem_id = self._calls.named_id(instance_id, span.subsystem_id)
                if span.HasField("run"):
                    self._calls.stamp(span.run, instance_id)
        merged = trace.merge_trace(request.trace_id, answers)
        if not merged.spans and not ctx.partial_failures:
            raise ConnectError(
                Code.NOT_FOUND, f"trace {request.trace_id!r} was not found in any subsystem"
            )
        return merged

    async def get_capabilities(
        self, request: wf.GetCapabilitiesRequest, ctx: CallContext
    ) -> wf.GetCapabilitiesResponse:
        caps = [
            inst.capabilities
            for inst in self._registry.connected()
            if inst.capabilities is not None and ctx.scope.may_read(inst.id)
        ]
        return wf.GetCapabilitiesResponse(capabilities=catalog.merge_capabilities(caps))
