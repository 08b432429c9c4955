"""Who is calling, for every request but Register and the probes, and what they may do.

`Callers` is an ASGI layer in front of the passthrough and the stack. It identifies
the caller (a verified bearer token, an auth proxy's headers from a trusted address,
the client certificate), takes the policy in force, and sets the request's
CALLER_SCOPE (api/context.py): an `Access`, or the refusal of a caller that needs an
identity or has no role. The refusal is raised by the service layer inside the
rpc, so every protocol (Connect, gRPC, gRPC-Web) gets it in its own form and a
browser can read it through CORS. /status is answered here: admins only.

Auth-proxy headers from anyone but a trusted proxy are removed before anything
reads them. `AuditActions` is the per-run path's ActionLog: it writes each action
attempt to the audit trail with the request's caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_network

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.types import ASGIApp, Receive, Scope, Send

from flowwatch_gateway.access.audit import AuditTrail
from flowwatch_gateway.access.identity import ANONYMOUS, AuthError, Caller
from flowwatch_gateway.access.oidc import OidcVerifier
from flowwatch_gateway.access.policy import OPEN_POLICY, Policy, PolicyFile, open_actions_warning
from flowwatch_gateway.access.proxy_identity import IDENTITY_HEADERS, ProxyIdentity
from flowwatch_gateway.access.scope import Access
from flowwatch_gateway.access.tls_identity import tls_caller
from flowwatch_gateway.api.context import CALLER_SCOPE, CallContext
from flowwatch_gateway.config import GatewayConfig

log = logging.getLogger(__name__)

__all__ = ["AuditActions", "Callers", "Identity"]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
STATUS_PATH = "/status"


@dataclass
class Identity:
    """The identity sources and the policy a gateway is configured with."""

    config: GatewayConfig
    policy_file: PolicyFile | None
    oidc: OidcVerifier | None
    proxy: ProxyIdentity | None

    @classmethod
    def for_config(cls, config: GatewayConfig) -> Identity:
        return cls(
            config,
            PolicyFile(config.policy_file) if config.policy_file is not None else None,
            (
                OidcVerifier(
                    config.oidc_issuer,
                    config.oidc_audience,
                    groups_claim=config.oidc_groups_claim,
                )
                if config.oidc_issuer
                else None
            ),
            (
                ProxyIdentity([ip_network(entry) for entry in config.auth_proxy_trusted])
                if config.auth_proxy_trusted
                else None
            ),
        )

    def policy(self) -> Policy:
        return self.policy_file.current() if self.policy_file is not None else OPEN_POLICY

    def reload(self) -> bool:
        """Read the policy file again now (SIGHUP); True when the new one was taken."""
        return self.policy_file.reload() if self.policy_file is not None else False

    def front(self, app: ASGIApp) -> Callers:
        return Callers(
            app,
            policy=self.policy,
            oidc=self.oidc,
            proxy=self.proxy,
            tls=self.config.tls_client_ca is not None,
        )

    def start(self) -> None:
        """Start fetching the issuer's keys; warn when anyone may act."""
        if self.oidc is not None:
            self.oidc.start()
        warning = open_actions_warning(self.config, self.policy())
        if warning:
            log.warning("%s", warning)

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()


class Callers:
    """ASGI layer: the request's caller and scope (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Callable[[], Policy],
        oidc: OidcVerifier | None = None,
        proxy: ProxyIdentity | None = None,
        tls: bool = False,
    ) -> None:
        self._app = app
        self._policy = policy
        self._oidc = oidc
        self._proxy = proxy
        self._tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self._app(scope, receive, send)
            return
        peer = scope["client"][0] if scope.get("client") else None
        authorization = None
        forwarded_identity = False
        for name, value in scope["headers"]:
            lowered = name.lower()
            if lowered == b"authorization":
                authorization = value.decode("latin-1")
            elif lowered in IDENTITY_HEADERS:
                forwarded_identity = True
        trusted_proxy = self._proxy is not None and self._proxy.trusts(peer)
        if forwarded_identity and not trusted_proxy:
            headers = scope["headers"]
            scope = dict(
                scope, headers=[h for h in headers if h[0].lower() not in IDENTITY_HEADERS]
            )
        refusal: ConnectError | None = None
        try:
            caller = await self._identify(authorization, peer, scope, trusted_proxy)
        except AuthError as exc:
            caller = ANONYMOUS
            code = Code.UNAVAILABLE if exc.retryable else Code.UNAUTHENTICATED
            refusal = ConnectError(code, exc.message)
        access = Access(caller, self._policy(), peer, scope["headers"])
        if refusal is None and not access.has_any_role:
            refusal = _no_role(access, identity_configured=self._identity_configured)
        if scope["path"] == STATUS_PATH and (refusal is not None or not access.admin):
            await _plain(send, 401 if caller.anonymous else 403, _status_refusal(access))
            return
        token = CALLER_SCOPE.set(refusal if refusal is not None else access)
        try:
            await self._app(scope, receive, send)
        finally:
            CALLER_SCOPE.reset(token)

    @property
    def _identity_configured(self) -> bool:
        return self._oidc is not None or self._proxy is not None or self._tls

    async def _identify(
        self, authorization: str | None, peer: str | None, scope: Scope, trusted_proxy: bool
    ) -> Caller:
        if authorization is not None and self._oidc is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("the Authorization header must be `Bearer <access token>`")
            return await self._oidc.verify(token.strip())
        if trusted_proxy and self._proxy is not None:
            found = self._proxy.caller(peer, scope["headers"])
            if found is not None:
                return found
        if self._tls:
            found = tls_caller(scope)
            if found is not None:
                return found
        return ANONYMOUS


def _no_role(access: Access, *, identity_configured: bool) -> ConnectError:
    if access.caller.anonymous:
        how = (
            "send `Authorization: Bearer <access token>` from the configured issuer, or "
            "come through the auth proxy"
            if identity_configured
            else "this gateway has no identity source configured (GATEWAY_OIDC_ISSUER, "
            "GATEWAY_AUTH_PROXY_TRUSTED, GATEWAY_TLS_CLIENT_CA)"
        )
        return ConnectError(
            Code.UNAUTHENTICATED, f"this gateway needs to know who is calling: {how}"
        )
    groups = ", ".join(sorted(access.caller.groups)) or "none"
    return ConnectError(
        Code.PERMISSION_DENIED,
        f"{access.who} (groups: {groups}) has no role in {access.policy.source}",
    )


def _status_refusal(access: Access) -> str:
    if access.caller.anonymous:
        return "/status is for admins: identify yourself (bearer token or auth proxy)\n"
    return f"/status is for admins; {access.who} is not an admin on every subsystem\n"


async def _plain(send: Send, status: int, text: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


class AuditActions:
    """The per-run path's ActionLog: each action attempt to the audit trail."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail

    def action(
        self, ctx: CallContext, rpc: str, run_id: str, owner: str | None, result: str
    ) -> None:
        scope = ctx.scope
        access = scope if isinstance(scope, Access) else None
        self._trail.record(
            caller=access.caller if access is not None else ANONYMOUS,
            role=access.role_on(owner) if access is not None and owner else None,
            rpc=rpc,
            run_id=run_id,
            owner=owner,
            code=result,
            request_id=access.request_id if access is not None else None,
            traceparent=access.traceparent if access is not None else None,
            peer=access.peer if access is not None else None,
        )
