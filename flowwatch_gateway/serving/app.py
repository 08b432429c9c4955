"""The gateway as one ASGI application: Register, the FlowWatch API, probes, CORS, lifespan.

Server-agnostic: pyvoy and uvicorn both serve what `create_app` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flowwatch_gateway.access.audit import AuditTrail
from flowwatch_gateway.api.context import (
    ANALYTICS_METHOD_HEADER,
    APPROXIMATE_HEADER,
    PARTIAL_FAILURE_HEADER,
)
from flowwatch_gateway.api.services import flowwatch_routes
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import REQUEST_LEG, RequestLeg
from flowwatch_gateway.registry.base import Clock, Registry, SystemClock
from flowwatch_gateway.registry.endpoints import EndpointPolicy, parse_host_rules
from flowwatch_gateway.registry.health import HealthMonitor, SelfPreservation
from flowwatch_gateway.registry.keys import ApiKeys, load_keys_file
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.redis import RedisRegistry
from flowwatch_gateway.registry.register import (
    REASON_SHUTDOWN,
    RegisterObserver,
    RegisterService,
    gateway_asgi_app,
)
from flowwatch_gateway.registry.register_front import RegisterFront
from flowwatch_gateway.registry.validation import REGISTER_READ_MAX_BYTES
from flowwatch_gateway.serving.asgi_guard import GuardReceiveAfterBody
from flowwatch_gateway.serving.callers import AuditActions, Identity
from flowwatch_gateway.serving.canonical import CanonicalPaths
from flowwatch_gateway.serving.control import serve_control_socket
from flowwatch_gateway.serving.envoy_leg import EnvoyLeg
from flowwatch_gateway.serving.guards import ReadOnlyActions, RequireHttp2
from flowwatch_gateway.serving.hosts import AllowedHosts, HostGuard
from flowwatch_gateway.serving.observability import Observability
from flowwatch_gateway.serving.passthrough import Passthrough

log = logging.getLogger(__name__)

# What connect-web and grpc-web clients send and need to read across origins.
CORS_ALLOW_HEADERS = (
    "Content-Type",
    "Connect-Protocol-Version",
    "Connect-Timeout-Ms",
    "Grpc-Timeout",
    "X-Grpc-Web",
    "X-User-Agent",
)
CORS_EXPOSE_HEADERS = (
    "Grpc-Status",
    "Grpc-Message",
    "Grpc-Status-Details-Bin",
    PARTIAL_FAILURE_HEADER,
    APPROXIMATE_HEADER,
    ANALYTICS_METHOD_HEADER,
)
CORS_METHODS = ("POST", "GET", "OPTIONS")
CORS_MAX_AGE_SECONDS = 7200

# How long shutdown waits for DisconnectCommands to leave before closing streams anyway.
DISCONNECT_FLUSH_SECONDS = 1.5
# How long shutdown waits for the shared registry's last writes to Redis.
SHARED_FLUSH_SECONDS = 1.5


class _GatewayApp(Starlette):
    """Starlette with two paths in front of its middleware: Register and the passthrough.

    Register (`register_app`, GatewayService paths): every message of every stream
    otherwise passes the error, CORS, exception and observability wrappers around
    each send; with 1,000 streams at a 1 s heartbeat that was about a tenth of the
    gateway's CPU. Subsystems are not browsers (no CORS), the API-call hooks do not
    cover Register, and the connect app answers its own errors.

    The passthrough (`front`, serving/passthrough.py): measured on a routed GetRun,
    the middleware stack cost about a third of the gateway's Python time per call.
    It answers per-run calls itself, with what the stack would add, and hands every
    other request to the stack (`stack`).

    Every other request runs with `request_leg` (when set) as its REQUEST_LEG: the
    unary calls it makes to subsystems leave through the Envoy the app runs in.

    `scope["app"]` is still this app, so `request.app.state` keeps working.
    """

    register_prefix = ""
    register_app: ASGIApp | None = None
    front: ASGIApp | None = None
    request_leg: RequestLeg | None = None
    allowed_hosts: AllowedHosts | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.outermost(scope, receive, send)

    @functools.cached_property
    def outermost(self) -> ASGIApp:
        """In front of everything below: a path not in canonical form is 404 (canonical.py),
        and with GATEWAY_ALLOWED_HOSTS a request for another host is refused (hosts.py)."""
        if self.allowed_hosts is None:
            return CanonicalPaths(self.dispatch)
        return CanonicalPaths(HostGuard(self.dispatch, self.allowed_hosts))

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self.register_app
        if (
            direct is not None
            and scope["type"] == "http"
            and str(scope.get("path", "")).startswith(self.register_prefix)
        ):
            scope["app"] = self
            await direct(scope, receive, send)
            return
        leg = REQUEST_LEG.set(self.request_leg) if self.request_leg is not None else None
        try:
            if self.front is not None:
                scope["app"] = self
                await self.front(scope, receive, send)
                return
            await super().__call__(scope, receive, send)
        finally:
            if leg is not None:
                REQUEST_LEG.reset(leg)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Starlette app with all its middleware."""
        await super().__call__(scope, receive, send)


def create_app(
    config: GatewayConfig, *, clock: Clock | None = None, control_socket: str | None = None
) -> Starlette:
    """Build the gateway app; its registry is exposed as `app.state.registry`.

    With `control_socket`, the app listens there for the supervisor's drain request
    (see control.py); without it, draining happens in the lifespan shutdown only.
    """
    shared = (
        RedisRegistry(config.redis_url, heartbeat=config.heartbeat, clock=clock)
        if config.redis_url
        else None
    )
    registry: Registry = shared if shared is not None else InMemoryRegistry(clock)
    observability = Observability(
        registry, config, clock or SystemClock(), lambda: readiness(app.state)[1]
    )
    register_service = register_service_for(config, registry, observer=observability.metrics)
    # One endpoint policy: checked when a subsystem registers and again on every call.
    trail = AuditTrail(socket.gethostname(), config.audit_log, observability.metrics)
    gateway = Gateway(
        registry,
        config,
        endpoint_policy=register_service.endpoint_policy,
        interceptors=observability.upstream_interceptors,
        actions=AuditActions(trail),
    )
    identity = Identity.for_config(config)
    observability.watch_owner_cache(gateway.per_run.owners)
    registry.add_listener(register_service)
    if shared is not None:
        shared.disconnect_handler = register_service.disconnect
    monitor = HealthMonitor(
        registry,
        heartbeat=config.heartbeat,
        grace_period=config.grace_period,
        self_preservation=SelfPreservation(config.self_preservation),
        clock=clock,
    )
    gateway_app = gateway_asgi_app(register_service)

    async def drain() -> None:
        """Refuse new registrations and tell every connected subsystem to go away."""
        app.state.draining = True
        register_service.start_draining()
        log.info("gateway draining: %d register stream(s)", register_service.open_streams)
        await register_service.disconnect_all(
            REASON_SHUTDOWN, flush_timeout=DISCONNECT_FLUSH_SECONDS
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("gateway starting: %s", config.describe())
        monitor_task = asyncio.create_task(monitor.run(), name="health-monitor")
        sync_task = asyncio.create_task(shared.run(), name="registry-sync") if shared else None
        control = None
        if control_socket is not None:
            control = await serve_control_socket(control_socket, drain, identity.reload)
        await observability.start()
        identity.start()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Under uvicorn the app runs on the main thread and takes SIGHUP itself;
            # inside Envoy the supervisor forwards it over the control socket.
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, identity.reload)
        app.state.started = True
        try:
            yield
        finally:
            await drain()
            if control is not None:
                control.close()
            monitor_task.cancel()
            await asyncio.gather(monitor_task, return_exceptions=True)
            if shared is not None and sync_task is not None:
                # Lets the last stale marks of the drain reach Redis, within a bound.
                await shared.aclose()
                await asyncio.wait({sync_task}, timeout=SHARED_FLUSH_SECONDS)
                sync_task.cancel()
                await asyncio.gather(sync_task, return_exceptions=True)
            await gateway.aclose()
            await identity.aclose()
            trail.close()
            await observability.stop()
            log.info("gateway stopped")

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> PlainTextResponse:
        status, text = readiness(request.app.state)
        # Redis being down never makes a replica unready (that would take every replica
        # out at once); the body tells operators instead.
        details = f"\n{shared.status()}\n" if shared is not None else ""
        return PlainTextResponse(text + details, status_code=status)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Mount(gateway_app.path, RequireHttp2(gateway_app)),
        *flowwatch_routes(gateway.backends()),
    ]
    app = _GatewayApp(
        routes=routes,
        middleware=[
            Middleware(GuardReceiveAfterBody),
            # Outside CORS: /metrics and /status never carry CORS headers.
            *observability.middleware(),
            Middleware(cors_middleware, config=config),
            # Inside CORS, so a browser can read the refusal.
            *([Middleware(ReadOnlyActions)] if config.read_only else []),
        ],
        lifespan=lifespan,
    )
    checker = gateway.endpoint_checker
    envoy = (
        EnvoyLeg.from_environment(checker, timeout_s=config.upstream_timeout)
        if checker is not None
        else None
    )
    app.request_leg = envoy
    inner: ASGIApp = app.stack
    if config.passthrough:
        # Per-run calls to a known owner as bytes; everything else takes the stack.
        inner = Passthrough(
            app.stack,
            calls=gateway.per_run,
            sink=observability.metrics,
            envoy=envoy,
            cors=cors_middleware(app.stack, config=config),
            propagate_trace=config.trace_propagation,
            read_only=config.read_only,
        )
    # Who is calling, for every request but Register and the probes (callers.py).
    app.front = identity.front(inner)
    if config.allowed_hosts:
        app.allowed_hosts = AllowedHosts.of(config.allowed_hosts)
    # The same guards the middleware path applies (the Mount above stays for clarity
    # and for the bare service path).
    app.register_prefix = f"{gateway_app.path}/"
    app.register_app = RegisterFront(
        register_service,
        GuardReceiveAfterBody(RequireHttp2(gateway_app)),
        read_max_bytes=REGISTER_READ_MAX_BYTES,
    )
    app.state.registry = registry
    app.state.register_service = register_service
    app.state.config = config
    app.state.monitor = monitor
    observability.metrics.watch_registry_health(
        self_preserving=lambda: monitor.self_preservation.active,
        shared_up=None if shared is None else lambda: shared.redis_up,
    )
    app.state.started = False
    app.state.draining = False
    return app


def cors_middleware(app: ASGIApp, *, config: GatewayConfig) -> CORSMiddleware:
    """What browsers at the UI origins may send and read (one policy for every path)."""
    return CORSMiddleware(
        app,
        allow_origins=list(config.ui_origins),
        allow_methods=list(CORS_METHODS),
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        max_age=CORS_MAX_AGE_SECONDS,
    )


def register_service_for(
    config: GatewayConfig, registry: Registry, *, observer: RegisterObserver | None = None
) -> RegisterService:
    """The Register handler with the keys, endpoint policy and heartbeat `config` sets."""
    entries = load_keys_file(config.api_keys_file) if config.api_keys_file else ()
    policy = EndpointPolicy.for_listener(
        config.host,
        config.port,
        allow=parse_host_rules(",".join(config.endpoint_allow)),
        deny=parse_host_rules(",".join(config.endpoint_deny)),
    )
    return RegisterService(
        registry,
        keys=ApiKeys(config.api_key, entries),
        endpoint_policy=policy,
        heartbeat=config.heartbeat,
        observer=observer,
    )


def readiness(state: State) -> tuple[int, str]:
    """(HTTP status, word) of /readyz, also shown on /status.

    Self-preservation is shown here (still ready: the replica serves from its view).
    """
    if state.draining:
        return 503, "draining"
    if not state.started:
        return 503, "starting"
    guard = state.monitor.self_preservation
    if guard.active:
        return 200, f"ready (self-preservation: {guard.reason})"
    return 200, "ready"
