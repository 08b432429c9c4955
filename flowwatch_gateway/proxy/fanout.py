"""Calling several subsystems at once, each under its own deadline.

Two shapes cover every proxied rpc: `gather` asks every target and keeps whatever
answers arrive in time (partial failure is data, not an error), and `first_success`
asks every target and returns the first success, cancelling the rest (used when
the owner of a run or workflow is unknown). Both are plain functions over targets;
`FanOut` adds what a gateway call needs around them: which subsystems to ask, the
per-call deadline, and naming the subsystems that could not be asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.errors import (
    ANSWER_CODES,
    TRANSPORT_CODES,
    UpstreamUnreached,
    describe_failure,
    is_subsystems_answer,
)
from flowwatch_gateway.log_limit import LogLimit
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry

__all__ = [
    "Budget",
    "FanOut",
    "Gathered",
    "UpstreamCall",
    "agreed_error",
    "all_failed_error",
    "first_success",
    "gather",
    "no_subsystem_error",
    "not_found_or_unavailable",
    "routed_error",
    "upstream_timeout_ms",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

UpstreamCall = Callable[[UpstreamClients, int], Awaitable[T]]
"""An rpc on one subsystem's clients, given the per-call timeout in milliseconds."""

# Time kept back from the caller's deadline to merge and send the answer.
RESPONSE_MARGIN_S = 0.05
DEFAULT_CONCURRENCY = 64

# Every UI call can fail at the same subsystems again, so the lines saying what a
# subsystem answered or why a call to it failed have a budget per subsystem and in
# all (the counters and /status still see every call).
FAILURE_LINES = LogLimit(log, "subsystem call failure lines", per_source=5, total=50, window_s=60.0)


@dataclass(frozen=True)
class Budget:
    """What one fan-out may spend: calls in parallel at most, and a time every call ends by.

    With 1,000 subsystems a fan-out queues its calls behind `concurrency` slots; a call
    that starts late gets only the time left, so none outlives the caller's deadline.
    """

    timeout_ms: int
    concurrency: int = DEFAULT_CONCURRENCY
    started: float = field(default_factory=time.monotonic)

    def remaining_ms(self) -> int:
        """Milliseconds a call starting now may take; 0 when the budget is spent."""
        elapsed_ms = (time.monotonic() - self.started) * 1000
        return max(0, int(self.timeout_ms - elapsed_ms))


def upstream_timeout_ms(ctx: CallContext, configured_s: float) -> int:
    """Per-subsystem deadline: the configured one, always below the caller's own."""
    budget = configured_s
    remaining = ctx.remaining()
    if remaining is not None:
        budget = min(budget, remaining * 0.9 - RESPONSE_MARGIN_S)
    return max(1, int(budget * 1000))


@dataclass
class Gathered(Generic[T]):
    answers: dict[str, T] = field(default_factory=dict)
    failures: dict[str, ConnectError] = field(default_factory=dict)

    def report(self, ctx: CallContext, rpc: str) -> None:
        """Name failed subsystems in the response header and the log."""
        for instance_id, exc in sorted(self.failures.items()):
            reason = describe_failure(exc)
            ctx.add_partial_failure(instance_id, reason)
            if not FAILURE_LINES.admit(instance_id):
                continue
            log.warning(
                "%s: instance %s failed: %s (%s)",
                *(rpc, instance_id, reason, exc.message),
                extra={"subsystem_id": instance_id, "rpc": rpc},
            )

    def raise_if_all_failed(self, rpc: str) -> None:
        if self.failures and not self.answers:
            raise all_failed_error(rpc, self.failures)


def no_subsystem_error(rpc: str) -> ConnectError:
    return ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem is connected to the gateway")


def all_failed_error(rpc: str, failures: Mapping[str, ConnectError]) -> ConnectError:
    """No subsystem answered: deadline_exceeded when time ran out for all, else unavailable."""
    names = ", ".join(f"{iid} ({describe_failure(exc)})" for iid, exc in sorted(failures.items()))
    if all(exc.code == Code.DEADLINE_EXCEEDED for exc in failures.values()):
        return ConnectError(
            Code.DEADLINE_EXCEEDED, f"{rpc}: no subsystem answered in time: {names}"
        )
    return ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem answered: {names}")


def agreed_error(rpc: str, failures: Mapping[str, ConnectError]) -> ConnectError:
    """The error for a call no subsystem answered: their common answer, else unavailable."""
    codes = {exc.code for exc in failures.values()}
    if len(codes) == 1 and next(iter(codes)) in ANSWER_CODES:
        instance_id = min(failures)
        return routed_error(instance_id, failures[instance_id])
    return all_failed_error(rpc, failures)


async def _run_one(
    target: UpstreamClients, call: UpstreamCall[T], budget: Budget, slots: asyncio.Semaphore
) -> T:
    async with slots:
        timeout_ms = budget.remaining_ms()
        if timeout_ms <= 0:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "no time left before the caller's deadline")
        return await _call(target, call, timeout_ms)


async def _call(target: UpstreamClients, call: UpstreamCall[T], timeout_ms: int) -> T:
    try:
        return await call(target, timeout_ms)
    except ConnectError:
        raise
    except Exception as exc:  # a bug or a decoding problem: one subsystem, not the whole answer
        log.exception("call to instance %s failed unexpectedly", target.instance_id)
        raise ConnectError(Code.INTERNAL, "unexpected error talking to subsystem") from exc


async def gather(
    targets: Sequence[UpstreamClients], call: UpstreamCall[T], budget: Budget
) -> Gathered[T]:
    """Ask every target (at most budget.concurrency at once); answers and failures by id."""
    result: Gathered[T] = Gathered()
    if not targets:
        return result
    slots = asyncio.Semaphore(budget.concurrency)
    outcomes = await asyncio.gather(
        *(_run_one(t, call, budget, slots) for t in targets), return_exceptions=True
    )
    for target, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, ConnectError):
            result.failures[target.instance_id] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            result.answers[target.instance_id] = outcome
    return result


async def first_success(
    targets: Sequence[UpstreamClients], call: UpstreamCall[T], budget: Budget
) -> tuple[str, T] | dict[str, ConnectError]:
    """Ask every target; return (subsystem id, answer) of the first success.

    The other calls are cancelled as soon as one succeeds. Errors do not end the
    search: a subsystem that does not own the subject may say so with any code (an
    engine that validates ids answers invalid_argument), and only the owner's answer
    decides. When none succeeds the failures are returned by subsystem id, for
    `not_found_or_unavailable` to turn into the right error.
    """
    failures: dict[str, ConnectError] = {}
    if not targets:
        return failures
    slots = asyncio.Semaphore(budget.concurrency)
    tasks = {
        asyncio.ensure_future(_run_one(t, call, budget, slots)): t.instance_id for t in targets
    }
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    return tasks[task], task.result()
                if not isinstance(exc, ConnectError):
                    raise exc
                failures[tasks[task]] = exc
        return failures
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not warn about it


def routed_error(instance_id: str, exc: ConnectError) -> ConnectError:
    """A subsystem's error as the caller should see it.

    What the subsystem answered (failed_precondition, not_found, even internal: Go
    subsystems answer every refusal so) reaches the caller with its own code and
    message, and is logged with the subsystem's id. A call that never got an answer
    (unreachable, timed out) keeps its code but gets the gateway's words, naming the
    subsystem instead of leaking connection details; the details go to the log. So
    does an answer the gateway could not use (bytes that do not decode): `internal`,
    since neither the caller's request nor the connection was at fault.
    """
    answer = is_subsystems_answer(exc)
    if FAILURE_LINES.admit(instance_id):
        log.info(
            "subsystem %s %s %s: %s",
            instance_id,
            "answered" if answer else "call failed:",
            exc.code.name,
            exc.message,
            extra={"subsystem_id": instance_id},
        )
    if answer:
        return exc
    if exc.code not in TRANSPORT_CODES:
        return ConnectError(
            Code.INTERNAL,
            f"subsystem {instance_id} answered in a way the gateway could not use "
            f"({describe_failure(exc)}); see the gateway's log",
        )
    return ConnectError(exc.code, f"subsystem {instance_id} {describe_failure(exc)}")


def not_found_or_unavailable(
    what: str, failures: Mapping[str, ConnectError], rpc: str
) -> ConnectError:
    """The error for a lookup no subsystem answered with success.

    not_found when every subsystem answered and none has it. A subsystem that could
    not be asked (unreachable, stale, timed out) might own it: unavailable, naming
    them (deadline_exceeded when time ran out for all of them). When exactly one
    subsystem answered something other than not_found, it owns the subject and its
    answer is passed on.
    """
    if not failures:
        return no_subsystem_error(rpc)
    others = {iid: exc for iid, exc in failures.items() if exc.code != Code.NOT_FOUND}
    unasked = {iid: exc for iid, exc in others.items() if not is_subsystems_answer(exc)}
    answered = {iid: exc for iid, exc in others.items() if iid not in unasked}
    if unasked:
        names = ", ".join(
            f"{iid} ({describe_failure(exc)})" for iid, exc in sorted(unasked.items())
        )
        code = (
            Code.DEADLINE_EXCEEDED
            if all(exc.code == Code.DEADLINE_EXCEEDED for exc in unasked.values())
            else Code.UNAVAILABLE
        )
        return ConnectError(
            code, f"{what} was not found in the subsystems that answered; no answer from: {names}"
        )
    if len(answered) == 1:
        ((instance_id, exc),) = answered.items()
        return routed_error(instance_id, exc)
    if answered:  # several refused it in their own ways (e.g. id validation): nobody has it
        names = ", ".join(
            f"{iid} ({exc.code.name.lower()})" for iid, exc in sorted(answered.items())
        )
        return ConnectError(Code.NOT_FOUND, f"{what} was not found in any subsystem ({names})")
    return ConnectError(Code.NOT_FOUND, f"{what} was not found in any subsystem")


class FanOut:
    """Chooses whom a gateway call asks, under which deadline, and reports who was missing."""

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        timeout_s: float,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._timeout_s = timeout_s
        self._concurrency = concurrency

    def timeout_ms(self, ctx: CallContext) -> int:
        return upstream_timeout_ms(ctx, self._timeout_s)

    def budget(self, ctx: CallContext) -> Budget:
        """The budget of one fan-out made now on behalf of this call."""
        return Budget(self.timeout_ms(ctx), self._concurrency)

    def connected(
        self, ctx: CallContext, ids: Iterable[str] | None = None
    ) -> list[UpstreamClients]:
        """Clients of the connected subsystems the caller may read (all, or among `ids`)."""
        scope = ctx.scope
        return [c for c in self._pool.connected(ids) if scope.may_read(c.instance_id)]

    def every_connected(self) -> list[UpstreamClients]:
        """Every connected subsystem, whoever calls: for finding a run's owner, whose
        rights are checked once it is known (per_run.py)."""
        return self._pool.connected(None)

    def note_stale(self, ctx: CallContext, ids: Iterable[str] | None = None) -> None:
        """Stale subsystems are not asked; say that their data is missing."""
        wanted = None if ids is None else set(ids)
        for inst in self._registry.instances():
            if (
                not inst.connected
                and (wanted is None or inst.id in wanted)
                and ctx.scope.may_read(inst.id)
            ):
                ctx.add_partial_failure(inst.id, "stale")

    def unreachable(self, ctx: CallContext, exclude: Iterable[str] = ()) -> dict[str, ConnectError]:
        """Registered subsystems the caller may read that cannot be asked now (stale):
        they might own it."""
        skip = set(exclude)
        return {
            inst.id: UpstreamUnreached(Code.UNAVAILABLE, "stale")
            for inst in self._registry.instances()
            if not inst.connected and inst.id not in skip and ctx.scope.may_read(inst.id)
        }

    def readable(self, ctx: CallContext, ids: Iterable[str]) -> list[str]:
        """The subsystem ids among `ids` the caller may read."""
        return [iid for iid in ids if ctx.scope.may_read(iid)]

    def targets(
        self, rpc: str, ctx: CallContext, ids: Iterable[str] | None = None
    ) -> list[UpstreamClients]:
        """The connected subsystems to ask; unavailable when there is none."""
        wanted = None if ids is None else list(ids)
        targets = self.connected(ctx, wanted)
        self.note_stale(ctx, wanted)
        if not targets:
            raise no_subsystem_error(rpc)
        return targets

    async def gather(
        self,
        rpc: str,
        ctx: CallContext,
        call: UpstreamCall[T],
        ids: Iterable[str] | None = None,
    ) -> dict[str, T]:
        """Fan out to connected subsystems; returns answers, names failures; all fail -> error.

        With no connected subsystem the answer is empty, not an error: a fresh gateway's
        dashboard shows "nothing yet", and stale subsystems are named as missing.
        """
        wanted = None if ids is None else list(ids)
        targets = self.connected(ctx, wanted)
        self.note_stale(ctx, wanted)
        result: Gathered[T] = await gather(targets, call, self.budget(ctx))
        result.report(ctx, rpc)
        result.raise_if_all_failed(rpc)
        return result.answers
