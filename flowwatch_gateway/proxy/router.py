"""Which subsystem answers for a workflow.

Workflow ids are each subsystem's own (every demo subsystem has a `health-check`),
so a workflow call goes to the registrations whose workflow list names the id (as
announced at registration or discovered right after), or, when none does, to every
connected subsystem; the gateway waits for all of them. One answer is the answer.
Several answers are given only when they agree (the subsystem each names aside);
when they differ the call is refused, `failed_precondition`, naming them: which
one the caller meant cannot be told, and the first to answer must not decide.
Run routing lives in per_run.py.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf.message import Message

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.proxy.fanout import (
    FanOut,
    UpstreamCall,
    gather,
    no_subsystem_error,
    not_found_or_unavailable,
)
from flowwatch_gateway.proxy.per_run import conflict_error
from flowwatch_gateway.registry.base import Registry

__all__ = ["Router"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Router:
    """Routes workflow-scoped calls to the workflow's owners."""

    def __init__(self, registry: Registry, fan: FanOut) -> None:
        self._registry = registry
        self._fan = fan

    async def on_workflow_owner(
        self, rpc: str, workflow_id: str, ctx: CallContext, call: UpstreamCall[M]
    ) -> M:
        """Ask the registrations that name the workflow (else everyone); see above."""
        what = f"workflow {workflow_id!r}"
        declared = self._registry.workflow_owners(workflow_id)
        targets = self._fan.connected(ctx, declared or None)
        if not targets:
            if not declared:
                raise no_subsystem_error(rpc)
            raise not_found_or_unavailable(what, self._fan.unreachable(ctx), rpc)
        result = await gather(targets, call, self._fan.budget(ctx))
        answers = result.answers
        if len(answers) > 1 and not _agree(list(answers.values())):
            log.warning(
                "%s: subsystems %s answer differently for %s; the call is refused",
                rpc,
                ", ".join(sorted(answers)),
                what,
                extra={"workflow_id": workflow_id},
            )
            raise conflict_error(f"{what} (their answers differ)", answers, rpc)
        if answers:
            return answers[min(answers)]
        result.failures.update(self._fan.unreachable(ctx, result.failures))
        raise not_found_or_unavailable(what, result.failures, rpc)


def _agree(answers: list[M]) -> bool:
    """Whether the answers say the same thing, each one's subsystem id aside."""
    first = _without_subsystem(answers[0])
    return all(_without_subsystem(other) == first for other in answers[1:])


def _without_subsystem(answer: Message) -> bytes:
    copy = type(answer)()
    copy.CopyFrom(answer)
    workflow = (
        getattr(copy, "workflow", None) if "workflow" in copy.DESCRIPTOR.fields_by_name else None
    )
    if workflow is not None:
        workflow.ClearField("subsystem_id")
    return copy.SerializeToString(deterministic=True)
