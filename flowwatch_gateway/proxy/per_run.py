"""The rules of a call addressed by run id, in one place for both serving paths.

Who owns a run. A run belongs to the one connected subsystem that claims it when
every connected subsystem is asked GetRun: the first call for a run looks it up so,
waiting for all of them (within the deadline), and later calls go to the owner it
found. Exactly one claim routes the call; several refuse it, `failed_precondition`,
naming them all, and the conflict is logged; none is `not_found` (or `unavailable`
when a subsystem that might own it could not be asked). Who answers first never
decides. Listing a run (ListRuns rows, WatchRuns events) never makes an owner, it
can only unsettle one: a row from anyone but the owner makes the next call look
again (owners.py). What a subsystem says about other runs (search hits, trace
spans, a retry's `new_run_id`) is no claim at all.

Which subsystem a row names. A run, span or search hit a subsystem returns carries
its own id, or an id no other registration holds: a gateway registered as a
subsystem of this one answers for the subsystems registered with it. A row that
names another registration's id is shown under the id of the subsystem that sent it.

Both the decoding path (proxy/runs.py) and the passthrough (serving/passthrough.py)
call `PerRunCalls`: ownership, bookkeeping after an answer, the deadline sent
upstream and the error a caller sees are decided here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.message import Message

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.errors import UpstreamUnreached
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy.fanout import (
    Budget,
    FanOut,
    gather,
    no_subsystem_error,
    not_found_or_unavailable,
    routed_error,
)
from flowwatch_gateway.proxy.owners import RunOwnerCache, group_by_owner
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry

__all__ = [
    "MAX_BULK_LOOKUPS",
    "PER_RUN_RPCS",
    "PerRunCalls",
    "PerRunRpc",
    "conflict_error",
]

log = logging.getLogger(__name__)

# Unknown run ids of one bulk action looked up at the same time, and at most in all:
# each lookup asks every connected subsystem.
PARALLEL_LOOKUPS = 8
MAX_BULK_LOOKUPS = 100


@dataclass(frozen=True)
class PerRunRpc:
    """A RunService rpc addressed by run id: its name and whether it changes state."""

    name: str
    method: str  # the generated client's method, e.g. "get_run_steps"
    changes_state: bool


PER_RUN_RPCS: tuple[PerRunRpc, ...] = (
    PerRunRpc("GetRun", "get_run", changes_state=False),
    PerRunRpc("GetRunSteps", "get_run_steps", changes_state=False),
    PerRunRpc("GetRunTimeline", "get_run_timeline", changes_state=False),
    PerRunRpc("GetRunLogs", "get_run_logs", changes_state=False),
    PerRunRpc("RetryRun", "retry_run", changes_state=True),
    PerRunRpc("RetryFromStep", "retry_from_step", changes_state=True),
    PerRunRpc("CancelRun", "cancel_run", changes_state=True),
    PerRunRpc("PauseRun", "pause_run", changes_state=True),
    PerRunRpc("ResumeRun", "resume_run", changes_state=True),
    PerRunRpc("SkipStep", "skip_step", changes_state=True),
)
PER_RUN_BY_NAME = {rpc.name: rpc for rpc in PER_RUN_RPCS}


def conflict_error(what: str, claimants: Collection[str], rpc: str) -> ConnectError:
    """The refusal of a call whose subject several subsystems claim."""
    ordered = sorted(claimants)
    names = ", ".join(ordered[:-1]) + f" and {ordered[-1]}" if len(ordered) > 1 else ordered[0]
    return ConnectError(
        Code.FAILED_PRECONDITION,
        f"{rpc}: {what} is claimed by subsystems {names}; the gateway sends a call to "
        "one owner only, so it refuses this one until just one of them answers for it",
    )


@dataclass(frozen=True)
class Located:
    """The one subsystem that claims a run, and its GetRun answer."""

    clients: UpstreamClients
    answer: runs.GetRunResponse


@dataclass(frozen=True)
class _Lookup:
    """What asking everyone found, whoever asked: one owner, several, or none (why)."""

    located: Located | None = None
    claimants: tuple[str, ...] = ()
    failures: dict[str, ConnectError] = field(default_factory=dict)


class ActionLog(Protocol):
    """Where every action attempt is recorded, allowed or not (the audit trail)."""

    def action(
        self, ctx: CallContext, rpc: str, run_id: str, owner: str | None, result: str
    ) -> None: ...


@dataclass
class _Attempt:
    owner: str | None = None


class PerRunCalls:
    """Ownership, bookkeeping, deadlines and errors of the calls addressed by run id."""

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        fan: FanOut,
        cache_size: int,
        actions: ActionLog | None = None,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._fan = fan
        self._actions = actions
        self.owners = RunOwnerCache(cache_size)
        # Lookups under way, by run id: concurrent calls for one run share one.
        self._lookups: dict[str, asyncio.Future[_Lookup]] = {}

    # --- ownership -------------------------------------------------------------------
    def owner_now(self, run_id: str) -> UpstreamClients | None:
        """The connected subsystem that alone claims the run, known without asking."""
        if run_id not in self.owners:  # a miss is counted once, by the lookup
            return None
        owner = self.owners.get(run_id)
        return None if owner is None else self._pool.connected_clients(owner)

    def claim(self, instance_id: str, run_ids: Iterable[str]) -> None:
        """Rows the subsystem listed: each one listed by another too unsettles its run."""
        for run_id in self.owners.claim_many(instance_id, run_ids):
            # Debug only: a subsystem listing others' runs could write a line per row.
            log.debug(
                "run %r is listed by subsystems %s; its owner is looked up again",
                run_id,
                ", ".join(sorted(self.owners.claimants(run_id))),
                extra={"run_id": run_id, "subsystem_id": instance_id},
            )

    async def locate(
        self, rpc: str, run_id: str, ctx: CallContext, *, budget: Budget | None = None
    ) -> Located:
        """Ask every connected subsystem GetRun and wait for all: the one claimant."""
        shared = self._lookups.get(run_id)
        if shared is None:
            shared = asyncio.ensure_future(
                self._locate(rpc, run_id, budget or self._fan.budget(ctx))
            )
            self._lookups[run_id] = shared
            shared.add_done_callback(lambda done: self._lookup_done(run_id, done))
        return self._outcome(await asyncio.shield(shared), rpc, run_id, ctx)

    def _outcome(self, lookup: _Lookup, rpc: str, run_id: str, ctx: CallContext) -> Located:
        """A lookup's finding as this caller may hear it: it names only the subsystems
        the caller may read."""
        what = f"run {run_id!r}"
        if lookup.located is not None:
            return lookup.located
        if lookup.claimants:
            seen = [c for c in lookup.claimants if ctx.scope.may_read(c)]
            if not seen:
                raise _outside_scope(rpc, run_id, ctx)
            hidden = len(lookup.claimants) - len(seen)
            names = [*seen, *([f"{hidden} you may not see"] if hidden else [])]
            raise conflict_error(what, names, rpc)
        failures = self._fan.unreachable(ctx, lookup.failures)
        failures.update(
            (iid, exc) for iid, exc in lookup.failures.items() if ctx.scope.may_read(iid)
        )
        raise not_found_or_unavailable(what, failures, rpc)

    def authorize(self, rpc: str, owner: str, run_id: str, ctx: CallContext, *, acts: bool) -> None:
        """Refuse the call unless the caller may read (or, for an action, act on) the
        owner's runs."""
        scope = ctx.scope
        if not scope.may_read(owner):
            raise _outside_scope(rpc, run_id, ctx)
        if acts and not scope.may_act(owner):
            raise ConnectError(
                Code.PERMISSION_DENIED,
                f"{rpc}: {scope.who} may read but not act on the runs of subsystem "
                f"{owner}; that needs the operator role on it",
            )

    def audit(
        self,
        ctx: CallContext,
        rpc: str,
        run_id: str,
        owner: str | None,
        error: ConnectError | None,
    ) -> None:
        """Record one action attempt on one run, allowed or not."""
        if self._actions is not None:
            result = "ok" if error is None else error.code.name.lower()
            self._actions.action(ctx, rpc, run_id, owner, result)

    def _lookup_done(self, run_id: str, done: asyncio.Future[_Lookup]) -> None:
        self._lookups.pop(run_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: a caller that left must not make asyncio warn

    async def _locate(
        self,
        rpc: str,
        run_id: str,
        budget: Budget,
        silent: set[str] | None = None,
    ) -> _Lookup:
        """The lookup itself; `silent` (bulk calls) holds subsystems that ran out of
        time in an earlier lookup: they are not asked, and this lookup adds its own."""
        targets = [
            c for c in self._fan.every_connected() if silent is None or c.instance_id not in silent
        ]
        if not targets:
            raise no_subsystem_error(rpc)
        result = await gather(targets, _get_run_call(run_id), budget)
        if silent is not None:
            silent.update(
                iid for iid, exc in result.failures.items() if exc.code == Code.DEADLINE_EXCEEDED
            )
        claims = {iid: answer for iid, answer in result.answers.items() if _claims(answer, run_id)}
        for iid in result.answers.keys() - claims.keys():
            result.failures[iid] = ConnectError(Code.NOT_FOUND, "answered for another run")
        if len(claims) > 1:
            if self.owners.claim_by_all(run_id, claims):
                _log_conflict(run_id, claims)
            return _Lookup(claimants=tuple(sorted(claims)))
        if not claims:
            return _Lookup(failures=result.failures)
        ((owner, answer),) = claims.items()
        self.owners.settle(run_id, owner)
        clients = next(c for c in targets if c.instance_id == owner)
        self.stamp(answer.run, owner)
        return _Lookup(Located(clients, answer))

    # --- one call on the decoding path -------------------------------------------------
    async def call(self, rpc: PerRunRpc, request: Any, ctx: CallContext) -> Message:
        """Send `request` to the run's owner and apply the rules to its answer; an
        action is audited whatever came of it."""
        attempt = _Attempt()
        try:
            answer = await self._call(rpc, request, ctx, attempt)
        except ConnectError as exc:
            if rpc.changes_state:
                self.audit(ctx, rpc.name, request.run_id, attempt.owner, exc)
            raise
        if rpc.changes_state:
            self.audit(ctx, rpc.name, request.run_id, attempt.owner, None)
        return answer

    async def _call(
        self, rpc: PerRunRpc, request: Any, ctx: CallContext, attempt: _Attempt
    ) -> Message:
        run_id: str = request.run_id
        clients = self.owner_now(run_id)
        if clients is not None:
            attempt.owner = clients.instance_id
            self.authorize(rpc.name, clients.instance_id, run_id, ctx, acts=rpc.changes_state)
            try:
                answer = await _send(clients, rpc, request, self.timeout_ms(ctx))
            except ConnectError as exc:
                refusal = self.failed(clients.instance_id, run_id, exc)
                if refusal is not None:
                    raise refusal from None
            else:
                return self.accepted(rpc, clients.instance_id, run_id, answer)
        located = await self.locate(rpc.name, run_id, ctx)
        attempt.owner = located.clients.instance_id
        self.authorize(rpc.name, located.clients.instance_id, run_id, ctx, acts=rpc.changes_state)
        if rpc.name == "GetRun":
            return located.answer  # the lookup asked the owner this very question
        owner = located.clients
        try:
            answer = await _send(owner, rpc, request, self.timeout_ms(ctx))
        except ConnectError as exc:
            raise routed_error(owner.instance_id, exc) from None
        return self.accepted(rpc, owner.instance_id, run_id, answer)

    def timeout_ms(self, ctx: CallContext) -> int:
        """The deadline sent upstream: the configured one, inside the caller's."""
        return self._fan.timeout_ms(ctx)

    def accepted(self, rpc: PerRunRpc, owner: str, run_id: str, answer: Message) -> Message:
        """What the owner answered, as the caller sees it.

        A GetRun answer about another run is refused; its run names a subsystem the
        owner may answer for.
        """
        if isinstance(answer, runs.GetRunResponse) and answer.HasField("run"):
            if answer.run.id and answer.run.id != run_id:
                raise ConnectError(
                    Code.INTERNAL,
                    f"subsystem {owner} answered GetRun for run {run_id!r} with another run",
                )
            self.stamp(answer.run, owner)
        return answer

    def failed(self, owner: str, run_id: str, exc: ConnectError) -> ConnectError | None:
        """The caller's error for the owner's failure; None when the owner disowned the
        run (not_found), which forgets its claim, so the caller looks again."""
        if exc.code == Code.NOT_FOUND and not isinstance(exc, UpstreamUnreached):
            self.owners.disown(run_id, owner)
            return None
        return routed_error(owner, exc)

    # --- which subsystem a row names ---------------------------------------------------
    def stamp(self, run: types.Run, instance_id: str) -> types.Run:
        """The run, naming `instance_id` unless it names an id the subsystem may use."""
        run.subsystem_id = self.named_id(instance_id, run.subsystem_id)
        return run

    def named_id(self, instance_id: str, named: str) -> str:
        """The subsystem id a row from `instance_id` may carry: its own, or one no other
        registration holds (a federated gateway's subsystems)."""
        if not named or named == instance_id or self._registry.get(named) is None:
            return named or instance_id
        log.debug("subsystem %s sent a row naming subsystem %s", instance_id, named)
        return instance_id

    # --- bulk actions ------------------------------------------------------------------
    async def owners_of(
        self, rpc: str, run_ids: Sequence[str], ctx: CallContext
    ) -> tuple[dict[str, list[str]], dict[str, ConnectError], dict[str, str]]:
        """Group run ids by owning subsystem; the others are looked up, a few at a time.

        Bounded: at most MAX_BULK_LOOKUPS lookups, all inside the caller's deadline, and
        a subsystem that did not answer one lookup in time is not asked again in this
        call. Returns (subsystem id -> run ids the caller may act on, run id -> why it
        is not sent, run id -> owner for every id whose owner is known).
        """
        grouped, unknown = group_by_owner(run_ids, self.owners)
        for owner in [o for o in grouped if self._pool.connected_clients(o) is None]:
            unknown.extend(grouped.pop(owner))
        errors: dict[str, ConnectError] = {}
        for run_id in unknown[MAX_BULK_LOOKUPS:]:
            errors[run_id] = ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"{rpc}: more than {MAX_BULK_LOOKUPS} runs of this call are unknown to the "
                "gateway; list them first, or send them in smaller calls",
            )
        budget = self._fan.budget(ctx)
        silent: set[str] = set()
        lookups = asyncio.Semaphore(PARALLEL_LOOKUPS)

        async def locate(run_id: str) -> None:
            async with lookups:
                try:
                    lookup = await self._locate(rpc, run_id, budget, silent)
                    located = self._outcome(lookup, rpc, run_id, ctx)
                except ConnectError as exc:
                    errors[run_id] = exc
                else:
                    grouped.setdefault(located.clients.instance_id, []).append(run_id)

        await asyncio.gather(*(locate(r) for r in unknown[:MAX_BULK_LOOKUPS]))
        owners = {run_id: owner for owner, ids in grouped.items() for run_id in ids}
        for owner in list(grouped):
            for run_id in grouped[owner]:
                try:
                    self.authorize(rpc, owner, run_id, ctx, acts=True)
                except ConnectError as exc:
                    errors[run_id] = exc
            grouped[owner] = [r for r in grouped[owner] if r not in errors]
            if not grouped[owner]:
                del grouped[owner]
        return grouped, errors, owners


def _outside_scope(rpc: str, run_id: str, ctx: CallContext) -> ConnectError:
    return ConnectError(
        Code.PERMISSION_DENIED,
        f"{rpc}: {ctx.scope.who} may not use run {run_id!r}: it belongs to a subsystem "
        "outside your scope (GATEWAY_POLICY_FILE)",
    )


def _log_conflict(run_id: str, claimants: Iterable[str]) -> None:
    log.warning(
        "run %r is claimed by subsystems %s; calls for it are refused until only one "
        "of them answers for it",
        run_id,
        ", ".join(sorted(claimants)),
        extra={"run_id": run_id},
    )


async def _send(clients: UpstreamClients, rpc: PerRunRpc, request: Any, timeout_ms: int) -> Message:
    answer: Message = await getattr(clients.runs, rpc.method)(request, timeout_ms=timeout_ms)
    return answer


def _claims(answer: runs.GetRunResponse, run_id: str) -> bool:
    """Whether a GetRun answer claims the run: it is about that run (or names none)."""
    return not answer.HasField("run") or answer.run.id in ("", run_id)


def _get_run_call(
    run_id: str,
) -> Callable[[UpstreamClients, int], Awaitable[runs.GetRunResponse]]:
    async def call(clients: UpstreamClients, timeout_ms: int) -> runs.GetRunResponse:
        return await clients.runs.get_run(runs.GetRunRequest(run_id=run_id), timeout_ms=timeout_ms)

    return call
