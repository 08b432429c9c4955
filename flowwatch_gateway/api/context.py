"""What a FlowWatch handler knows about a call besides its request message.

`CallContext` is passed to every `EngineAdapter` method by the service layer; the
header names are the FlowWatch API's own response headers, which clients (the UI,
the bench) read back.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Protocol

__all__ = [
    "ANALYTICS_METHOD_HEADER",
    "APPROXIMATE_HEADER",
    "CALLER_SCOPE",
    "PARTIAL_FAILURE_HEADER",
    "UNRESTRICTED",
    "CallContext",
    "CallerScope",
]

PARTIAL_FAILURE_HEADER = "flowwatch-partial-failure"
APPROXIMATE_HEADER = "flowwatch-approximate"
# How an analytics answer was computed: `exact`, `sketch;rel-err=0.01` or
# `approximate;reason=...` (the gateway's analytics, see README).
ANALYTICS_METHOD_HEADER = "flowwatch-analytics-method"
# The partial-failure header names at most this many subsystems (the first by id) and
# counts the rest: a header that grows with the fleet passes HTTP/2 header-list
# limits (16 KiB in many clients) at a few hundred failures, and the call then fails
# as a whole. The complete list stays in `partial_failures` (logs, metrics).
PARTIAL_FAILURE_HEADER_MAX_NAMED = 20


class CallerScope(Protocol):
    """What the caller may do, subsystem by subsystem: decided by flowwatch_gateway.access,
    asked by the proxy (which subsystems a read covers, whether an action may be sent)."""

    def may_read(self, subsystem_id: str) -> bool: ...

    def may_act(self, subsystem_id: str) -> bool: ...

    @property
    def admin(self) -> bool:
        """May see endpoints, configuration and /status."""
        ...

    @property
    def who(self) -> str:
        """The caller as messages and the audit trail name it."""
        ...


class _Unrestricted:
    """No access control configured: everyone may do everything (the default)."""

    def may_read(self, subsystem_id: str) -> bool:
        return True

    def may_act(self, subsystem_id: str) -> bool:
        return True

    @property
    def admin(self) -> bool:
        return True

    @property
    def who(self) -> str:
        return "anyone"


UNRESTRICTED: CallerScope = _Unrestricted()

# The scope of the request being served, or the error that refuses it (no identity
# where one is needed, a bad token). The serving layer that authenticates a request
# sets it for the request's task; the service layer and the passthrough read it into
# their CallContext, and nothing else reads it.
CALLER_SCOPE: ContextVar[CallerScope | Exception | None] = ContextVar(
    "flowwatch_caller_scope", default=None
)


class CallContext:
    """What a handler knows about a call besides its request message.

    Carries the caller's deadline (so fan-outs can stay below it) and collects
    response headers (partial failures, approximations) that the service layer
    sends back.
    """

    def __init__(
        self,
        *,
        deadline: float | None = None,
        request_headers: Mapping[str, str] | None = None,
        scope: CallerScope = UNRESTRICTED,
    ) -> None:
        self.deadline = deadline  # time.monotonic() value, or None for no deadline
        self.request_headers: Mapping[str, str] = request_headers or {}
        self.scope = scope
        self.response_headers: dict[str, str] = {}
        self._partial_failures: dict[str, str] = {}

    @classmethod
    def with_timeout(cls, seconds: float | None, scope: CallerScope = UNRESTRICTED) -> CallContext:
        return cls(deadline=None if seconds is None else time.monotonic() + seconds, scope=scope)

    @classmethod
    def for_request(cls, seconds: float | None) -> CallContext:
        """The context of the request being served: its deadline and its caller's scope.

        Raises the request's refusal (set by the serving layer) when it has one.
        """
        scope = CALLER_SCOPE.get()
        if isinstance(scope, Exception):
            raise scope
        return cls.with_timeout(seconds, UNRESTRICTED if scope is None else scope)

    def remaining(self) -> float | None:
        """Seconds left before the caller's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def add_partial_failure(self, instance_id: str, reason: str) -> None:
        """Record that one instance failed while others answered."""
        self._partial_failures[instance_id] = reason
        # nsmallest, not sorted: a fan-out to 1,000 failing subsystems adds 1,000 times.
        named = heapq.nsmallest(PARTIAL_FAILURE_HEADER_MAX_NAMED, self._partial_failures.items())
        header = ", ".join(f"{sid}: {why}" for sid, why in named)
        if len(self._partial_failures) > len(named):
            header += f", and {len(self._partial_failures) - len(named)} more"
        self.response_headers[PARTIAL_FAILURE_HEADER] = header

    @property
    def partial_failures(self) -> dict[str, str]:
        return dict(self._partial_failures)

    def mark_approximate(self, method: str) -> None:
        """Flag an answer that merges values that cannot be merged exactly."""
        self.response_headers[APPROXIMATE_HEADER] = method

    def mark_analytics_method(self, method: str) -> None:
        """Say how an analytics answer was computed (exact, sketch, approximate)."""
        self.response_headers[ANALYTICS_METHOD_HEADER] = method
