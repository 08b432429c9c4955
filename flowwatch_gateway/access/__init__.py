"""Access control: who may do what (policy.py), and the record of what was done (audit.py)."""

from __future__ import annotations

from flowwatch_gateway.access.audit import ActionSink, AuditTrail
from flowwatch_gateway.access.policy import (
    OPEN_POLICY,
    Policy,
    PolicyError,
    PolicyFile,
    Role,
    open_actions_warning,
)

__all__ = [
    "OPEN_POLICY",
    "ActionSink",
    "AuditTrail",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Role",
    "open_actions_warning",
]
