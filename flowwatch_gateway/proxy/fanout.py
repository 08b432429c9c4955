"""Calling several instances at once, each under its own deadline.

Two shapes cover every proxied rpc: `gather` asks every target and keeps whatever
answers arrive in time (partial failure is data, not an error), and `first_success`
asks every target and returns the first success, cancelling the rest (used when
the owner of a run or workflow is unknown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.adapter import CallContext
from flowwatch_gateway.proxy.upstream import UpstreamClients

log = logging.getLogger(__name__)

T = TypeVar("T")

UpstreamCall = Callable[[UpstreamClients, int], Awaitable[T]]
"""An rpc on one instance's clients, given the per-call timeout in milliseconds."""

_TRANSPORT_CODES = (
    Code.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED,
    Code.CANCELED,
    Code.UNKNOWN,
    Code.INTERNAL,
)
# An instance answering with one of these owns the subject of the call (the run
# exists there, the request was judged): waiting for the others is pointless.
_DEFINITIVE_CODES = (
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.ALREADY_EXISTS,
    Code.PERMISSION_DENIED,
    Code.OUT_OF_RANGE,
    Code.ABORTED,
    Code.RESOURCE_EXHAUSTED,
)

# Time kept back from the caller's deadline to merge and send the answer.
RESPONSE_MARGIN_S = 0.05


def upstream_timeout_ms(ctx: CallContext, configured_s: float) -> int:
    """Per-instance deadline: the configured one, always below the caller's own."""
    budget = configured_s
    remaining = ctx.remaining()
    if remaining is not None:
        budget = min(budget, remaining * 0.9 - RESPONSE_MARGIN_S)
    return max(1, int(budget * 1000))


def describe_failure(exc: ConnectError) -> str:
    """A short, safe reason for headers and messages (no upstream internals)."""
    if exc.code == Code.DEADLINE_EXCEEDED:
        return "timed out"
    if exc.code == Code.UNAVAILABLE:
        return "unavailable"
    return exc.code.name.lower()


@dataclass
class Gathered(Generic[T]):
    answers: dict[str, T] = field(default_factory=dict)
    failures: dict[str, ConnectError] = field(default_factory=dict)

    def report(self, ctx: CallContext, rpc: str) -> None:
        """Name failed instances in the response header and the log."""
        for instance_id, exc in sorted(self.failures.items()):
            reason = describe_failure(exc)
            ctx.add_partial_failure(instance_id, reason)
            log.warning("%s: instance %s failed: %s (%s)", rpc, instance_id, reason, exc.message)

    def raise_if_all_failed(self, rpc: str) -> None:
        if self.failures and not self.answers:
            raise all_failed_error(rpc, self.failures)


def all_failed_error(rpc: str, failures: Mapping[str, ConnectError]) -> ConnectError:
    names = ", ".join(f"{iid} ({describe_failure(exc)})" for iid, exc in sorted(failures.items()))
    return ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem answered: {names}")


async def _run_one(target: UpstreamClients, call: UpstreamCall[T], timeout_ms: int) -> T:
    try:
        return await call(target, timeout_ms)
    except ConnectError:
        raise
    except Exception as exc:  # a bug or a decoding problem: one instance, not the whole answer
        log.exception("call to instance %s failed unexpectedly", target.instance_id)
        raise ConnectError(Code.INTERNAL, "unexpected error talking to subsystem") from exc


async def gather(
    targets: Sequence[UpstreamClients], call: UpstreamCall[T], timeout_ms: int
) -> Gathered[T]:
    """Ask every target in parallel; collect answers and failures by instance id."""
    result: Gathered[T] = Gathered()
    if not targets:
        return result
    outcomes = await asyncio.gather(
        *(_run_one(t, call, timeout_ms) for t in targets), return_exceptions=True
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
    targets: Sequence[UpstreamClients], call: UpstreamCall[T], timeout_ms: int
) -> tuple[str, T] | dict[str, ConnectError]:
    """Ask every target; return (instance id, answer) of the first success.

    The other calls are cancelled as soon as one succeeds, or as soon as one gives
    a definitive answer (e.g. failed_precondition), which is raised. When none
    succeeds the failures are returned by instance id, for the caller to turn into
    the right error (not_found only when every instance said not found).
    """
    failures: dict[str, ConnectError] = {}
    if not targets:
        return failures
    tasks = {asyncio.ensure_future(_run_one(t, call, timeout_ms)): t.instance_id for t in targets}
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
                if exc.code in _DEFINITIVE_CODES:
                    raise routed_error(tasks[task], exc)
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
    """An instance's error as the caller should see it.

    Answers from the subsystem (not_found, failed_precondition, ...) keep their code
    and message; transport-level failures keep their code but get a message that
    names the instance instead of leaking connection details.
    """
    if exc.code in _TRANSPORT_CODES:
        return ConnectError(exc.code, f"subsystem {instance_id} {describe_failure(exc)}")
    return exc


def not_found_or_unavailable(
    what: str, failures: Mapping[str, ConnectError], rpc: str
) -> ConnectError:
    """not_found only when every instance said so; otherwise the ones that failed are named."""
    if not failures:
        return ConnectError(Code.UNAVAILABLE, f"{rpc}: no subsystem is connected to the gateway")
    if all(exc.code == Code.NOT_FOUND for exc in failures.values()):
        return ConnectError(Code.NOT_FOUND, f"{what} was not found in any subsystem")
    unanswered = {iid: exc for iid, exc in failures.items() if exc.code != Code.NOT_FOUND}
    if len(unanswered) == 1:
        # One instance did not say "not found": it owns the answer, keep its code.
        ((instance_id, exc),) = unanswered.items()
        return routed_error(instance_id, exc)
    names = ", ".join(f"{iid} ({describe_failure(exc)})" for iid, exc in sorted(unanswered.items()))
    return ConnectError(
        Code.UNAVAILABLE,
        f"{what} was not found in the subsystems that answered; these did not: {names}",
    )
