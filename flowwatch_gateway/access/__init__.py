"""Access control: who calls (identity sources), who may do what (policy.py), and the
record of what was done (audit.py)."""

from __future__ import annotations

from flowwatch_gateway.access.audit import ActionSink, AuditTrail
from flowwatch_gateway.access.identity import ANONYMOUS, AuthError, Caller
from flowwatch_gateway.access.oidc import Fetch, OidcVerifier
from flowwatch_gateway.access.policy import (
    OPEN_POLICY,
    Policy,
    PolicyError,
    PolicyFile,
    Role,
    open_actions_warning,
)
from flowwatch_gateway.access.proxy_identity import IDENTITY_HEADERS, ProxyIdentity
from flowwatch_gateway.access.tls_identity import tls_caller

__all__ = [
    "ANONYMOUS",
    "IDENTITY_HEADERS",
    "OPEN_POLICY",
    "ActionSink",
    "AuditTrail",
    "AuthError",
    "Caller",
    "Fetch",
    "OidcVerifier",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "ProxyIdentity",
    "Role",
    "open_actions_warning",
    "tls_caller",
]
