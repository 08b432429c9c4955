"""Which subsystem answers for a run or a workflow.

Per-run rpcs carry only a run id. The router asks the owner it remembers (the
run-owner cache, filled from every answer that names runs) and, on a miss, every
connected subsystem at once, keeping the first success. Actions that change state
locate an unknown owner with GetRun first and are then sent to it alone, so an
action never runs on two subsystems. Workflow calls ask the subsystems the
registry's workflow index names first, then everyone else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.proxy.fanout import (
    FanOut,
    UpstreamCall,
    first_success,
    no_subsystem_error,
    not_found_or_unavailable,
    routed_error,
)
from flowwatch_gateway.proxy.owners import RunOwnerCache, group_by_owner
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry, SubsystemInstance

__all__ = ["Router"]

T = TypeVar("T")

# Unknown run ids of one bulk action looked up at the same time.
PARALLEL_LOOKUPS = 8


class Router:
    """Routes run- and workflow-scoped calls; keeps the run-owner cache in step with removals."""

    def __init__(
        self, registry: Registry, pool: UpstreamPool, fan: FanOut, cache_size: int
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._fan = fan
        self.owners = RunOwnerCache(cache_size)
        registry.add_listener(self)

    # --- registry listener -----------------------------------------------------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        """A (re-)registration keeps the runs it owned: same subsystem, same runs."""

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        """Nothing to do, in O(1): a cached owner that is not connected counts as a miss,
        and its entries age out of the LRU (scanning 100k entries per removal did not)."""

    # --- runs ------------------------------------------------------------------------
    def remember(self, instance_id: str, run_ids: Iterable[str]) -> None:
        self.owners.put_many((run_id, instance_id) for run_id in run_ids if run_id)

    async def on_run_owner(
        self,
        rpc: str,
        run_id: str,
        ctx: CallContext,
        call: UpstreamCall[T],
        *,
        locate_first: bool = False,
    ) -> tuple[str, T]:
        """Call the subsystem that owns `run_id`: cached owner first, else ask all at once.

        With locate_first (actions that change state) an unknown owner is found with
        GetRun before the call is sent to it alone. `not_found` only when every
        registered subsystem could be asked and said so; a stale one might own the
        run, which makes it unavailable.
        """
        owner = self.owners.get(run_id)
        owner_clients = self._pool.connected_clients(owner) if owner else None
        if owner and owner_clients is not None:
            try:
                return owner, await call(owner_clients, self._fan.timeout_ms(ctx))
            except ConnectError as exc:
                if exc.code != Code.NOT_FOUND:
                    raise routed_error(owner, exc) from None
                self.owners.forget(run_id)  # the cache was wrong; look everywhere
        targets = self._fan.connected()
        if not targets:
            raise no_subsystem_error(rpc)
        if locate_first:
            owner = await self._locate(rpc, run_id, ctx, targets)
            clients = self._pool.get(owner)
            if clients is None:  # removed while being located
                raise ConnectError(Code.UNAVAILABLE, f"subsystem {owner} is no longer connected")
            try:
                return owner, await call(clients, self._fan.timeout_ms(ctx))
            except ConnectError as exc:
                raise routed_error(owner, exc) from None
        outcome = await first_success(targets, call, self._fan.budget(ctx))
        if isinstance(outcome, dict):
            outcome.update(self._fan.unreachable(outcome))
            raise not_found_or_unavailable(f"run {run_id!r}", outcome, rpc)
        self.owners.put(run_id, outcome[0])
        return outcome

    async def locate_run(self, rpc: str, run_id: str, ctx: CallContext) -> str:
        """The id of the subsystem that owns `run_id` (cached, else found with GetRun)."""
        owner, _ = await self.on_run_owner(rpc, run_id, ctx, _get_run_call(run_id))
        return owner

    async def _locate(
        self, rpc: str, run_id: str, ctx: CallContext, targets: Sequence[UpstreamClients]
    ) -> str:
        located = await first_success(targets, _get_run_call(run_id), self._fan.budget(ctx))
        if isinstance(located, dict):
            located.update(self._fan.unreachable(located))
            raise not_found_or_unavailable(f"run {run_id!r}", located, rpc)
        self.owners.put(run_id, located[0])
        return located[0]

    async def owners_of(
        self, run_ids: Sequence[str], ctx: CallContext
    ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Group run ids by owning subsystem; unknown owners are looked up in parallel.

        Returns (subsystem id -> run ids, run id -> error for ids no subsystem owns).
        """
        grouped, unknown = group_by_owner(run_ids, self.owners)
        for owner in [o for o in grouped if self._pool.connected_clients(o) is None]:
            unknown.extend(grouped.pop(owner))

        # Each unknown id is a lookup in every subsystem: a few at a time, not 1,000.
        lookups = asyncio.Semaphore(PARALLEL_LOOKUPS)

        async def locate(run_id: str) -> tuple[str, str | ConnectError]:
            async with lookups:
                try:
                    return run_id, await self.locate_run("GetRun", run_id, ctx)
                except ConnectError as exc:
                    return run_id, exc

        errors: dict[str, str] = {}
        for run_id, found in await asyncio.gather(*(locate(r) for r in unknown)):
            if isinstance(found, ConnectError):
                errors[run_id] = found.message
            else:
                grouped.setdefault(found, []).append(run_id)
        return grouped, errors

    # --- workflows -------------------------------------------------------------------
    async def on_workflow_owner(
        self, rpc: str, workflow_id: str, ctx: CallContext, call: UpstreamCall[T]
    ) -> T:
        """Ask the subsystems indexed as owning the workflow, then everyone else."""
        owners = self._registry.workflow_owners(workflow_id)
        failures: dict[str, ConnectError] = {}
        owner_targets = self._fan.connected(owners)
        if owner_targets:
            outcome = await first_success(owner_targets, call, self._fan.budget(ctx))
            if not isinstance(outcome, dict):
                return outcome[1]
            failures.update(outcome)
        others = [c for c in self._fan.connected() if c.instance_id not in set(owners)]
        if others:
            outcome = await first_success(others, call, self._fan.budget(ctx))
            if not isinstance(outcome, dict):
                return outcome[1]
            failures.update(outcome)
        failures.update(self._fan.unreachable(failures))
        raise not_found_or_unavailable(f"workflow {workflow_id!r}", failures, rpc)


def _get_run_call(run_id: str) -> UpstreamCall[runs.GetRunResponse]:
    async def call(clients: UpstreamClients, timeout_ms: int) -> runs.GetRunResponse:
        return await clients.runs.get_run(runs.GetRunRequest(run_id=run_id), timeout_ms=timeout_ms)

    return call
