"""The gateway's engine adapter: the FlowWatch API answered by the registered subsystems.

Per-run calls go to the instance that returned the run (a bounded LRU, filled from
every answer that names runs), with a broadcast on a miss; workflow calls route by
the registry's workflow index; list and analytics calls fan out and merge with the
pure functions of `merge.py` and `cursor.py`. Every fan-out runs under a
per-instance deadline below the caller's; instances that fail are named in the
`flowwatch-partial-failure` header while the healthy ones' data is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.message import Message

from flowwatch_gateway.api.adapter import CallContext, EngineAdapter
from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.api.listing import list_all_workflows
from flowwatch_gateway.api.ordering import resolve_order
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy import paging as cursors
from flowwatch_gateway.proxy.fanout import (
    Gathered,
    all_failed_error,
    first_success,
    gather,
    not_found_or_unavailable,
    routed_error,
    upstream_timeout_ms,
)
from flowwatch_gateway.proxy.live import LiveProxyMixin
from flowwatch_gateway.proxy.merge import catalog as merge
from flowwatch_gateway.proxy.owners import RunOwnerCache, group_by_owner
from flowwatch_gateway.proxy.upstream import UpstreamClients, negotiate, open_clients
from flowwatch_gateway.registry.base import Registry, SubsystemInstance

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=Message)

_RunRequest = (
    runs.GetRunRequest
    | runs.GetRunStepsRequest
    | runs.GetRunTimelineRequest
    | runs.GetRunLogsRequest
    | runs.RetryRunRequest
    | runs.RetryFromStepRequest
    | runs.CancelRunRequest
    | runs.PauseRunRequest
    | runs.ResumeRunRequest
    | runs.SkipStepRequest
)
_FilteredRequest = (
    analytics.GetThroughputRequest
    | analytics.GetFailureRateRequest
    | analytics.GetStepHeatmapRequest
    | analytics.GetLatencyRequest
)
_NOT_CONNECTED = ConnectError(Code.UNAVAILABLE, "not connected")
DISCOVERY_FIRST_RETRY_S = 0.5
DISCOVERY_MAX_RETRY_S = 30.0
RETRYABLE_DISCOVERY_CODES = (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED)
CLOSE_TIMEOUT_S = 2.0
REPLACED_CLIENTS_GRACE_S = 10.0


class GatewayAdapter(LiveProxyMixin, EngineAdapter):
    """Proxies the FlowWatch API to the subsystems in the registry."""

    def __init__(self, registry: Registry, config: GatewayConfig) -> None:
        self._registry = registry
        self._timeout_s = config.upstream_timeout
        self._owners = RunOwnerCache(config.run_cache_size)
        self._clients: dict[str, UpstreamClients] = {}
        self._background: set[asyncio.Task[None]] = set()
        # connectrpc turns a cancelled call into ConnectError(CANCELED), so a loop
        # cannot rely on task cancellation alone to stop: it also checks this.
        self._closing = asyncio.Event()
        registry.add_listener(self)

    # --- registry listener: client sets live exactly as long as registrations --------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        old = self._clients.pop(instance.id, None)
        # A reconnect to the same endpoint keeps the HTTP version already negotiated.
        mode = old.mode if old is not None and old.endpoint == instance.endpoint else None
        clients = open_clients(instance.id, instance.endpoint, mode)
        self._clients[instance.id] = clients
        if old is not None:
            self._spawn(self._close_later(old))
        self._spawn(self._prepare(instance, clients))

    @staticmethod
    async def _close_later(clients: UpstreamClients) -> None:
        """Let calls in flight on a replaced client set finish before closing it."""
        try:
            await asyncio.sleep(REPLACED_CLIENTS_GRACE_S)
        finally:
            await clients.close()

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        self._owners.forget_instance(instance.id)
        clients = self._clients.pop(instance.id, None)
        if clients is not None:
            self._spawn(clients.close())

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("background gateway task failed")

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _prepare(self, instance: SubsystemInstance, clients: UpstreamClients) -> None:
        """Settle the HTTP version, then discover what the registration left out.

        Subsystems often register before their own server listens, so both steps
        are retried with backoff for as long as this registration is current and
        the subsystem has not answered.
        """
        delay = DISCOVERY_FIRST_RETRY_S
        while self._registry.is_current(instance.id, instance.epoch):
            negotiated, reachable = await negotiate(clients)
            if self._closing.is_set():
                return
            if negotiated is not clients:
                if self._clients.get(instance.id) is not clients:  # replaced meanwhile
                    await negotiated.close()
                    return
                self._clients[instance.id] = clients = negotiated
            if reachable and await self._discover(instance, clients):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            if self._closing.is_set():
                return
            delay = min(delay * 2, DISCOVERY_MAX_RETRY_S)

    async def _discover(self, instance: SubsystemInstance, clients: UpstreamClients) -> bool:
        """Fetch workflows/capabilities when the RegisterRequest carried none (Go clients).

        Returns False when the subsystem could not be reached (worth another try);
        an rpc it answers with an error (e.g. unimplemented) is not asked again.
        """
        timeout_ms = int(self._timeout_s * 1000)
        workflows: list[types.WorkflowDefinition] | None = None
        capabilities: types.Capabilities | None = None
        unreachable = False
        if not instance.workflows:
            try:
                workflows = await self._fetch_all_workflows(clients, timeout_ms)
            except ConnectError as exc:
                unreachable |= exc.code in RETRYABLE_DISCOVERY_CODES
                log.warning("discovery: ListWorkflows on %s failed: %s", instance.id, exc.message)
        if instance.capabilities is None:
            try:
                response = await clients.workflows.get_capabilities(
                    wf.GetCapabilitiesRequest(), timeout_ms=timeout_ms
                )
                capabilities = response.capabilities
            except ConnectError as exc:
                unreachable |= exc.code in RETRYABLE_DISCOVERY_CODES
                log.warning("discovery: GetCapabilities on %s failed: %s", instance.id, exc.message)
        if workflows is not None or capabilities is not None:
            self._registry.update_discovery(
                instance.id, instance.epoch, workflows=workflows, capabilities=capabilities
            )
        return not unreachable

    @staticmethod
    async def _fetch_all_workflows(
        clients: UpstreamClients, timeout_ms: int
    ) -> list[types.WorkflowDefinition]:
        """Every workflow of one instance, each naming its subsystem, within one budget."""
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                found = await list_all_workflows(clients.workflows, timeout_ms)
        except TimeoutError:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "ListWorkflows timed out") from None
        for definition in found:
            if not definition.subsystem_id:
                definition.subsystem_id = clients.instance_id
        return found

    async def aclose(self) -> None:
        self._closing.set()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=CLOSE_TIMEOUT_S)
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    # --- targets ----------------------------------------------------------------------
    def _connected(self, ids: Iterable[str] | None = None) -> list[UpstreamClients]:
        wanted = None if ids is None else set(ids)
        return [
            self._clients[inst.id]
            for inst in self._registry.connected()
            if inst.id in self._clients and (wanted is None or inst.id in wanted)
        ]

    def _note_stale(self, ctx: CallContext, ids: Iterable[str] | None = None) -> None:
        """Stale instances are not asked; say that their data is missing."""
        wanted = None if ids is None else set(ids)
        for inst in self._registry.instances():
            if inst.state != "connected" and (wanted is None or inst.id in wanted):
                ctx.add_partial_failure(inst.id, "stale")

    def _timeout_ms(self, ctx: CallContext) -> int:
        return upstream_timeout_ms(ctx, self._timeout_s)

    async def _gather(
        self,
        rpc: str,
        ctx: CallContext,
        call: Callable[[UpstreamClients, int], Awaitable[T]],
        ids: Iterable[str] | None = None,
    ) -> dict[str, T]:
        """Fan out to connected instances; returns answers, names failures; all fail -> error."""
        ids = None if ids is None else list(ids)
        targets = self._connected(ids)
        self._note_stale(ctx, ids)
        if not targets:
            raise ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem is connected to the gateway")
        result: Gathered[T] = await gather(targets, call, self._timeout_ms(ctx))
        result.report(ctx, rpc)
        result.raise_if_all_failed(rpc)
        return result.answers

    # --- per-run routing ----------------------------------------------------------------
    def _unreachable(self, exclude: Iterable[str] = ()) -> dict[str, ConnectError]:
        """Registered instances that cannot be asked now (stale): they might own it."""
        skip = set(exclude)
        return {
            inst.id: ConnectError(Code.UNAVAILABLE, "stale")
            for inst in self._registry.instances()
            if inst.state != "connected" and inst.id not in skip
        }

    async def _on_run_owner(
        self,
        rpc: str,
        run_id: str,
        ctx: CallContext,
        call: Callable[[UpstreamClients, int], Awaitable[T]],
        *,
        locate_first: bool = False,
    ) -> tuple[str, T]:
        """Call the instance that owns `run_id`: cached owner first, else ask all at once.

        With locate_first (actions that change state) an unknown owner is found with
        GetRun before the call is sent to it alone, so an action never runs on more
        than one subsystem. `not_found` only when every registered instance could be
        asked and said so; a stale one might own the run, which makes it unavailable.
        """
        owner = self._owners.get(run_id)
        owner_clients = self._clients.get(owner) if owner else None
        if owner and owner_clients is not None and self._is_connected(owner):
            try:
                return owner, await call(owner_clients, self._timeout_ms(ctx))
            except ConnectError as exc:
                if exc.code != Code.NOT_FOUND:
                    raise routed_error(owner, exc) from None
                self._owners.forget(run_id)  # the cache was wrong; look everywhere
        targets = self._connected()
        if not targets:
            raise ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem is connected to the gateway")
        if locate_first:

            async def probe(c: UpstreamClients, timeout_ms: int) -> runs.GetRunResponse:
                return await c.runs.get_run(
                    runs.GetRunRequest(run_id=run_id), timeout_ms=timeout_ms
                )

            located = await first_success(targets, probe, self._timeout_ms(ctx))
            if isinstance(located, dict):
                located.update(self._unreachable(located))
                raise not_found_or_unavailable(f"run {run_id!r}", located, rpc)
            owner = located[0]
            self._owners.put(run_id, owner)
            try:
                return owner, await call(self._clients[owner], self._timeout_ms(ctx))
            except ConnectError as exc:
                raise routed_error(owner, exc) from None
        outcome = await first_success(targets, call, self._timeout_ms(ctx))
        if isinstance(outcome, dict):
            outcome.update(self._unreachable(outcome))
            raise not_found_or_unavailable(f"run {run_id!r}", outcome, rpc)
        self._owners.put(run_id, outcome[0])
        return outcome

    def _is_connected(self, instance_id: str) -> bool:
        instance = self._registry.get(instance_id)
        return instance is not None and instance.state == "connected"

    def _remember_runs(self, instance_id: str, found: Iterable[types.Run]) -> None:
        self._owners.put_many((run.id, instance_id) for run in found)

    # --- WorkflowService ----------------------------------------------------------------
    async def list_workflows(
        self, request: wf.ListWorkflowsRequest, ctx: CallContext
    ) -> wf.ListWorkflowsResponse:
        async def fetch(c: UpstreamClients, timeout_ms: int) -> wf.ListWorkflowsResponse:
            return wf.ListWorkflowsResponse(
                workflows=await self._fetch_all_workflows(c, timeout_ms)
            )

        answers = await self._gather("ListWorkflows", ctx, fetch)
        merged = [definition for _, definition in merge.merge_workflows(answers)]
        try:
            page, next_cursor, total = merge.paginate_list(
                merged,
                request.pagination.cursor,
                effective_page_size(request.pagination.limit),
            )
        except cursors.CursorError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"ListWorkflows: {exc.message}") from None
        return wf.ListWorkflowsResponse(
            workflows=page,
            pagination=types.PaginationResponse(next_cursor=next_cursor, total_count=total),
        )

    async def _on_workflow_owner(
        self,
        rpc: str,
        workflow_id: str,
        ctx: CallContext,
        call: Callable[[UpstreamClients, int], Awaitable[T]],
    ) -> T:
        """Ask the instances indexed as owning the workflow, then everyone else."""
        owners = self._registry.workflow_owners(workflow_id)
        failures: dict[str, ConnectError] = {}
        owner_targets = self._connected(owners)
        if owner_targets:
            outcome = await first_success(owner_targets, call, self._timeout_ms(ctx))
            if not isinstance(outcome, dict):
                return outcome[1]
            failures.update(outcome)
        others = [c for c in self._connected() if c.instance_id not in set(owners)]
        if others:
            outcome = await first_success(others, call, self._timeout_ms(ctx))
            if not isinstance(outcome, dict):
                return outcome[1]
            failures.update(outcome)
        failures.update(self._unreachable(failures))
        raise not_found_or_unavailable(f"workflow {workflow_id!r}", failures, rpc)

    async def get_workflow(
        self, request: wf.GetWorkflowRequest, ctx: CallContext
    ) -> wf.GetWorkflowResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.GetWorkflowResponse:
            return await c.workflows.get_workflow(request, timeout_ms=timeout_ms)

        return await self._on_workflow_owner("GetWorkflow", request.workflow_id, ctx, call)

    async def get_graph(self, request: wf.GetGraphRequest, ctx: CallContext) -> wf.GetGraphResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.GetGraphResponse:
            return await c.workflows.get_graph(request, timeout_ms=timeout_ms)

        return await self._on_workflow_owner("GetGraph", request.workflow_id, ctx, call)

    def _instance_views(self) -> list[merge.InstanceView]:
        return [
            merge.InstanceView(
                instance_id=inst.id,
                name=inst.name,
                description=inst.description,
                endpoint=inst.endpoint,
                state=inst.state,
                last_heartbeat=inst.last_heartbeat,
                stale_since=inst.stale_since,
                registered_at=inst.registered_at,
                workflow_count=len(inst.workflows),
                metadata=dict(inst.metadata),
                registration_id=inst.registration_id,
            )
            for inst in self._registry.instances()
        ]

    async def list_subsystems(
        self, request: wf.ListSubsystemsRequest, ctx: CallContext
    ) -> wf.ListSubsystemsResponse:
        # Never an error for lack of answers: the gateway's own view is the answer then.
        async def call(c: UpstreamClients, timeout_ms: int) -> wf.ListSubsystemsResponse:
            return await c.workflows.list_subsystems(request, timeout_ms=timeout_ms)

        result = await gather(self._connected(), call, self._timeout_ms(ctx))
        result.report(ctx, "ListSubsystems")
        return merge.merge_subsystems(result.answers, self._instance_views())

    async def get_subsystem(
        self, request: wf.GetSubsystemRequest, ctx: CallContext
    ) -> wf.GetSubsystemResponse:
        wanted = request.subsystem_id
        overview = await self.list_subsystems(wf.ListSubsystemsRequest(), ctx)
        summary = next((s for s in overview.subsystems if s.subsystem.id == wanted), None)
        if summary is None:
            raise ConnectError(Code.NOT_FOUND, f"subsystem {wanted!r} is not known to the gateway")
        instance_ids = summary.subsystem.metadata.get("gateway.instance", wanted).split(",")
        workflows = [
            definition
            for inst in self._registry.instances()
            if inst.id in instance_ids
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

        answers = await self._gather("GetTrace", ctx, call)
        for instance_id, answer in answers.items():
            self._remember_runs(instance_id, (span.run for span in answer.spans))
        merged = merge.merge_trace(request.trace_id, answers)
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
            if inst.capabilities is not None
        ]
        return wf.GetCapabilitiesResponse(capabilities=merge.merge_capabilities(caps))

    # --- RunService: listing ------------------------------------------------------------
    def _list_targets(self, run_filter: runs.RunFilter) -> list[str]:
        """subsystem_ids narrows the instances asked; unknown ids leave the filter upstream."""
        every = [inst.id for inst in self._registry.instances()]
        if not run_filter.subsystem_ids:
            return every
        named = [iid for iid in every if iid in set(run_filter.subsystem_ids)]
        return named or every

    async def list_runs(
        self, request: runs.ListRunsRequest, ctx: CallContext
    ) -> runs.ListRunsResponse:
        field, descending = resolve_order(request.order_by, request.descending)
        limit = effective_page_size(request.pagination.limit)
        query = cursors.query_fingerprint(request.filter, field, descending)
        state = cursors.resume_cursor(request.pagination.cursor, query)
        available = [clients.instance_id for clients in self._connected()]
        if state is None:
            wanted = set(self._list_targets(request.filter))
            self._note_stale(ctx, wanted)
            fetches = cursors.plan_fetches(None, [i for i in available if i in wanted], limit)
        else:
            fetches = cursors.plan_fetches(state, available, limit)
        if not fetches and (state is None or not available):
            raise ConnectError(
                Code.UNAVAILABLE, "ListRuns: no subsystem is connected to the gateway"
            )

        async def fetch(c: UpstreamClients, timeout_ms: int) -> cursors.InstancePage:
            plan = fetches[c.instance_id]
            upstream = runs.ListRunsRequest(
                filter=request.filter,
                pagination=types.PaginationRequest(cursor=plan.upstream_cursor, limit=plan.limit),
                order_by=field,
                descending=descending,
            )
            answer = await c.runs.list_runs(upstream, timeout_ms=timeout_ms)
            return cursors.InstancePage(
                runs=list(answer.runs),
                next_cursor=answer.pagination.next_cursor,
                total_count=answer.pagination.total_count,
            )

        result = await gather(self._connected(fetches), fetch, self._timeout_ms(ctx))
        result.report(ctx, "ListRuns")
        merged = cursors.merge_page(
            state, fetches, result.answers, limit, field, descending, query=query
        )
        for instance_id in merged.failed:
            if instance_id not in ctx.partial_failures:
                ctx.add_partial_failure(instance_id, "not connected")
        if not result.answers and merged.failed:
            # Nothing could be fetched: answering an empty page would loop a pager forever.
            raise all_failed_error(
                "ListRuns",
                {iid: result.failures.get(iid, _NOT_CONNECTED) for iid in merged.failed},
            )
        for instance_id, run in merged.runs:
            self._owners.put(run.id, instance_id)
        return runs.ListRunsResponse(
            runs=[run for _, run in merged.runs],
            pagination=types.PaginationResponse(
                next_cursor=cursors.encode_cursor(merged.next_state) if merged.next_state else "",
                total_count=merged.total_count,
            ),
        )

    # --- RunService: per-run calls ----------------------------------------------------
    async def _on_run(
        self,
        rpc: str,
        request: _RunRequest,
        ctx: CallContext,
        method: Callable[[UpstreamClients], Callable[..., Awaitable[T]]],
        *,
        changes_state: bool = False,
    ) -> T:
        """Send `request` to the owner of its run with the client method `method` picks."""

        async def call(c: UpstreamClients, timeout_ms: int) -> T:
            return await method(c)(request, timeout_ms=timeout_ms)

        owner, answer = await self._on_run_owner(
            rpc, request.run_id, ctx, call, locate_first=changes_state
        )
        new_run_id = getattr(answer, "new_run_id", "")
        if new_run_id:  # a retry's new run lives where the original did
            self._owners.put(new_run_id, owner)
        return answer

    async def get_run(self, request: runs.GetRunRequest, ctx: CallContext) -> runs.GetRunResponse:
        return await self._on_run("GetRun", request, ctx, lambda c: c.runs.get_run)

    async def get_run_steps(
        self, request: runs.GetRunStepsRequest, ctx: CallContext
    ) -> runs.GetRunStepsResponse:
        return await self._on_run("GetRunSteps", request, ctx, lambda c: c.runs.get_run_steps)

    async def get_run_timeline(
        self, request: runs.GetRunTimelineRequest, ctx: CallContext
    ) -> runs.GetRunTimelineResponse:
        return await self._on_run("GetRunTimeline", request, ctx, lambda c: c.runs.get_run_timeline)

    async def get_run_logs(
        self, request: runs.GetRunLogsRequest, ctx: CallContext
    ) -> runs.GetRunLogsResponse:
        return await self._on_run("GetRunLogs", request, ctx, lambda c: c.runs.get_run_logs)

    async def retry_run(
        self, request: runs.RetryRunRequest, ctx: CallContext
    ) -> runs.RetryRunResponse:
        return await self._on_run(
            "RetryRun", request, ctx, lambda c: c.runs.retry_run, changes_state=True
        )

    async def retry_from_step(
        self, request: runs.RetryFromStepRequest, ctx: CallContext
    ) -> runs.RetryFromStepResponse:
        return await self._on_run(
            "RetryFromStep", request, ctx, lambda c: c.runs.retry_from_step, changes_state=True
        )

    async def cancel_run(
        self, request: runs.CancelRunRequest, ctx: CallContext
    ) -> runs.CancelRunResponse:
        return await self._on_run(
            "CancelRun", request, ctx, lambda c: c.runs.cancel_run, changes_state=True
        )

    async def pause_run(
        self, request: runs.PauseRunRequest, ctx: CallContext
    ) -> runs.PauseRunResponse:
        return await self._on_run(
            "PauseRun", request, ctx, lambda c: c.runs.pause_run, changes_state=True
        )

    async def resume_run(
        self, request: runs.ResumeRunRequest, ctx: CallContext
    ) -> runs.ResumeRunResponse:
        return await self._on_run(
            "ResumeRun", request, ctx, lambda c: c.runs.resume_run, changes_state=True
        )

    async def skip_step(
        self, request: runs.SkipStepRequest, ctx: CallContext
    ) -> runs.SkipStepResponse:
        return await self._on_run(
            "SkipStep", request, ctx, lambda c: c.runs.skip_step, changes_state=True
        )

    # --- RunService: bulk actions -------------------------------------------------------
    async def _owners_of(
        self, run_ids: Sequence[str], ctx: CallContext
    ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Group run ids by owning instance; unknown owners are looked up in parallel.

        Returns (instance id -> run ids, run id -> error for ids no instance owns).
        """
        grouped, unknown = group_by_owner(run_ids, self._owners)
        for owner in [o for o in grouped if not self._is_connected(o)]:
            unknown.extend(grouped.pop(owner))

        async def locate(run_id: str) -> tuple[str, str | ConnectError]:
            try:
                owner, _ = await self._on_run_owner(
                    "GetRun",
                    run_id,
                    ctx,
                    lambda c, t: c.runs.get_run(runs.GetRunRequest(run_id=run_id), timeout_ms=t),
                )
                return run_id, owner
            except ConnectError as exc:
                return run_id, exc

        errors: dict[str, str] = {}
        for run_id, found in await asyncio.gather(*(locate(r) for r in unknown)):
            if isinstance(found, ConnectError):
                errors[run_id] = found.message
            else:
                grouped.setdefault(found, []).append(run_id)
        return grouped, errors

    async def _bulk(
        self,
        rpc: str,
        run_ids: Sequence[str],
        ctx: CallContext,
        call: Callable[
            [UpstreamClients, list[str], int], Awaitable[Sequence[runs.BulkActionResult]]
        ],
    ) -> list[runs.BulkActionResult]:
        grouped, errors = await self._owners_of(run_ids, ctx)
        results: dict[str, runs.BulkActionResult] = {
            run_id: runs.BulkActionResult(run_id=run_id, success=False, error=message)
            for run_id, message in errors.items()
        }
        timeout_ms = self._timeout_ms(ctx)

        async def on_instance(instance_id: str, ids: list[str]) -> None:
            clients = self._clients.get(instance_id)
            try:
                if clients is None:
                    raise ConnectError(Code.UNAVAILABLE, "not connected")
                answered = await call(clients, ids, timeout_ms)
            except ConnectError as exc:
                reason = routed_error(instance_id, exc).message
                for run_id in ids:
                    results[run_id] = runs.BulkActionResult(
                        run_id=run_id, success=False, error=reason
                    )
                ctx.add_partial_failure(instance_id, reason)
                return
            for result in answered:
                results[result.run_id] = result
                if result.new_run_id:
                    self._owners.put(result.new_run_id, instance_id)

        await asyncio.gather(*(on_instance(iid, ids) for iid, ids in grouped.items()))
        return merge.merge_bulk_results(run_ids, results)

    async def bulk_retry(
        self, request: runs.BulkRetryRequest, ctx: CallContext
    ) -> runs.BulkRetryResponse:
        async def call(
            c: UpstreamClients, ids: list[str], timeout_ms: int
        ) -> Sequence[runs.BulkActionResult]:
            answer = await c.runs.bulk_retry(
                runs.BulkRetryRequest(run_ids=ids), timeout_ms=timeout_ms
            )
            return list(answer.results)

        return runs.BulkRetryResponse(
            results=await self._bulk("BulkRetry", request.run_ids, ctx, call)
        )

    async def bulk_cancel(
        self, request: runs.BulkCancelRequest, ctx: CallContext
    ) -> runs.BulkCancelResponse:
        async def call(
            c: UpstreamClients, ids: list[str], timeout_ms: int
        ) -> Sequence[runs.BulkActionResult]:
            answer = await c.runs.bulk_cancel(
                runs.BulkCancelRequest(run_ids=ids, reason=request.reason), timeout_ms=timeout_ms
            )
            return list(answer.results)

        return runs.BulkCancelResponse(
            results=await self._bulk("BulkCancel", request.run_ids, ctx, call)
        )

    # --- AnalyticsService -----------------------------------------------------------------
    def _analytics_scope(self, subsystem_id: str, workflow_id: str) -> list[str] | None:
        """The instances an analytics question concerns (None = all).

        A subsystem filter naming an instance, or a workflow only one instance owns,
        lets the gateway ask just that instance, whose answer is then exact.
        """
        every = {inst.id for inst in self._registry.instances()}
        if subsystem_id and subsystem_id in every:
            return [subsystem_id]
        if workflow_id:
            owners = [iid for iid in self._registry.workflow_owners(workflow_id) if iid in every]
            if owners:
                return owners
        return None

    async def _merged_analytics(
        self,
        rpc: str,
        request: _FilteredRequest,
        ctx: CallContext,
        method: Callable[[UpstreamClients], Callable[..., Awaitable[T]]],
    ) -> dict[str, T]:
        """Ask the instances the request's filter concerns; answers by instance id."""

        async def call(c: UpstreamClients, timeout_ms: int) -> T:
            return await method(c)(request, timeout_ms=timeout_ms)

        scope = self._analytics_scope(request.filter.subsystem_id, request.filter.workflow_id)
        return await self._gather(rpc, ctx, call, scope)

    async def get_throughput(
        self, request: analytics.GetThroughputRequest, ctx: CallContext
    ) -> analytics.GetThroughputResponse:
        answers = await self._merged_analytics(
            "GetThroughput", request, ctx, lambda c: c.analytics.get_throughput
        )
        return merge.merge_throughput(answers)

    async def get_failure_rate(
        self, request: analytics.GetFailureRateRequest, ctx: CallContext
    ) -> analytics.GetFailureRateResponse:
        answers = await self._merged_analytics(
            "GetFailureRate", request, ctx, lambda c: c.analytics.get_failure_rate
        )
        return merge.merge_failure_rate(answers)

    async def get_step_heatmap(
        self, request: analytics.GetStepHeatmapRequest, ctx: CallContext
    ) -> analytics.GetStepHeatmapResponse:
        answers = await self._merged_analytics(
            "GetStepHeatmap", request, ctx, lambda c: c.analytics.get_step_heatmap
        )
        return merge.merge_heatmap(answers)

    async def get_latency(
        self, request: analytics.GetLatencyRequest, ctx: CallContext
    ) -> analytics.GetLatencyResponse:
        """Latency percentiles, with run counts per bucket fetched alongside as weights."""

        async def call(
            c: UpstreamClients, timeout_ms: int
        ) -> tuple[analytics.GetLatencyResponse, analytics.GetThroughputResponse]:
            latency, throughput = await asyncio.gather(
                c.analytics.get_latency(request, timeout_ms=timeout_ms),
                c.analytics.get_throughput(
                    analytics.GetThroughputRequest(filter=request.filter), timeout_ms=timeout_ms
                ),
            )
            return latency, throughput

        scope = self._analytics_scope(request.filter.subsystem_id, request.filter.workflow_id)
        answers = await self._gather("GetLatency", ctx, call, scope)
        weights = merge.throughput_weights({iid: tp for iid, (_, tp) in answers.items()})
        merged, approximate = merge.merge_latency(
            {iid: latency for iid, (latency, _) in answers.items()}, weights
        )
        if approximate:
            ctx.mark_approximate("run-weighted-mean-of-instance-percentiles")
        return merged

    async def get_step_duration(
        self, request: analytics.GetStepDurationRequest, ctx: CallContext
    ) -> analytics.GetStepDurationResponse:
        async def call(c: UpstreamClients, timeout_ms: int) -> analytics.GetStepDurationResponse:
            return await c.analytics.get_step_duration(request, timeout_ms=timeout_ms)

        scope = self._analytics_scope("", request.workflow_id)
        merged, approximate = merge.merge_step_duration(
            await self._gather("GetStepDuration", ctx, call, scope)
        )
        if approximate:
            ctx.mark_approximate("sample-weighted-mean-of-instance-percentiles")
        return merged
