"""Access control: who calls the gateway (identity sources)."""

from flowwatch_gateway.access.identity import ANONYMOUS, AuthError, Caller
from flowwatch_gateway.access.oidc import Fetch, OidcVerifier
from flowwatch_gateway.access.proxy_identity import IDENTITY_HEADERS, ProxyIdentity
from flowwatch_gateway.access.tls_identity import tls_caller

__all__ = [
    "ANONYMOUS",
    "IDENTITY_HEADERS",
    "AuthError",
    "Caller",
    "Fetch",
    "OidcVerifier",
    "ProxyIdentity",
    "tls_caller",
]
