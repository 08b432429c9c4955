"""What one request's caller may read and do: the caller and the policy, together.

`Access` is the CallerScope (api/context.py) the proxy asks, made once per request by
the serving layer from the caller it identified and the policy in force.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from flowwatch_gateway.access.identity import Caller
from flowwatch_gateway.access.policy import Policy, Role

__all__ = ["Access"]


@dataclass(frozen=True)
class Access:
    """One caller under one policy, with what the audit trail records of the request."""

    caller: Caller
    policy: Policy
    peer: str | None = None
    # The request's headers, read only when an action is recorded.
    headers: Sequence[tuple[bytes, bytes]] = field(default=(), repr=False, compare=False)

    @cached_property
    def request_id(self) -> str | None:
        return self._header(b"x-request-id")

    @cached_property
    def traceparent(self) -> str | None:
        return self._header(b"traceparent")

    def _header(self, wanted: bytes) -> str | None:
        for name, value in self.headers:
            if name.lower() == wanted:
                return value.decode("latin-1")[:128]
        return None

    def role_on(self, subsystem_id: str) -> Role | None:
        return self.policy.role_on(self.caller, subsystem_id)

    def may_read(self, subsystem_id: str) -> bool:
        return self.policy.visible(self.caller)(subsystem_id)

    def may_act(self, subsystem_id: str) -> bool:
        role = self.policy.role_on(self.caller, subsystem_id)
        return role is not None and role >= Role.OPERATOR

    @property
    def admin(self) -> bool:
        """Admin on every subsystem: may see endpoints, configuration and /status."""
        return self.policy.role_everywhere(self.caller) == Role.ADMIN

    @property
    def has_any_role(self) -> bool:
        return self.policy.highest_role(self.caller) is not None

    @property
    def who(self) -> str:
        if self.caller.anonymous:
            return "an anonymous caller"
        return f"user:{self.caller.user}"
