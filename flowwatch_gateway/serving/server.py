"""Running the gateway app under a real server: pyvoy (Envoy, default) or uvicorn.

pyvoy runs the ASGI app inside an Envoy child process, loading it by the string
ASGI_APP; this process only supervises it. The validated configuration reaches the
child as environment variables (GatewayConfig.to_env).

Shutdown: Envoy resets every open stream as soon as it gets SIGTERM, before the app's
lifespan shutdown runs, so a DisconnectCommand sent from there is lost. On
SIGTERM/SIGINT this process therefore first asks the app to drain over a private
Unix socket (control.py): it refuses new registrations and sends DisconnectCommand
on every Register stream; then Envoy is stopped.

Envoy settings that matter for the long-lived Register stream: pyvoy's single-app
config has no router filter, so no route timeout (Envoy's 15 s default) applies; the
connection manager's stream idle timeout (5 min by default) is raised to stay well
above the heartbeat, since pings are the only traffic on an idle Register stream.

Slow and idle clients (ListenerLimits, from GATEWAY_REQUEST_HEADER_TIMEOUT,
GATEWAY_IDLE_TIMEOUT, GATEWAY_MAX_CONNECTIONS): Envoy closes a connection whose
request headers take too long, closes a connection with no stream in progress once
it has been idle too long (an open Register stream is a stream in progress, however
quiet, so it is never cut by this), and refuses connections above the cap
(overload manager). uvicorn has a connection cap and an idle timeout for
keep-alive connections, but nothing that times request headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyvoy import LogLevel, PyvoyServer, StartupError

from flowwatch_gateway import exit_guard
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.serving.control import CONTROL_SOCKET_ENV, request_drain, request_reload
from flowwatch_gateway.serving.envoy_admin import PrivateAdminPyvoyServer
from flowwatch_gateway.serving.envoy_leg import ENVOY_LEG_ENV, envoy_clusters
from flowwatch_gateway.serving.logs import configure_logging

__all__ = ["configure_logging", "serve"]

log = logging.getLogger(__name__)

ASGI_APP = "flowwatch_gateway.serving.asgi:app"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
DOWNSTREAM_CONNECTIONS_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
ENVOY_DEFAULT_STREAM_IDLE_TIMEOUT = 300.0
# A Register stream is idle between pings; allow several missed ones before Envoy cuts it.
IDLE_TIMEOUT_HEARTBEATS = 6
UVICORN_GRACEFUL_SHUTDOWN_SECONDS = 3
# Upper bound for the app to send DisconnectCommands before Envoy is stopped regardless.
DRAIN_TIMEOUT_SECONDS = 5.0

_ENVOY_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "info",  # Envoy's own debug output is far too chatty for application debugging
    "info": "warning",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
}


def stream_idle_timeout(heartbeat: float) -> float:
    """Seconds Envoy lets a stream go without traffic; never below Envoy's default."""
    return max(ENVOY_DEFAULT_STREAM_IDLE_TIMEOUT, heartbeat * IDLE_TIMEOUT_HEARTBEATS)


@dataclass(frozen=True)
class ListenerLimits:
    """What the listener allows slow and idle clients, in seconds and connections."""

    request_header_timeout: float
    idle_timeout: float
    max_connections: int

    @classmethod
    def of(cls, config: GatewayConfig) -> ListenerLimits:
        return cls(config.request_header_timeout, config.idle_timeout, config.max_connections)


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def tune_envoy_config(
    config: dict[str, Any], *, heartbeat: float, limits: ListenerLimits
) -> dict[str, Any]:
    """Set every HTTP connection manager for long-lived streams and against slow clients."""
    for listener in config.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                typed = network_filter.get("typed_config", {})
                if typed.get("@type") == HCM_TYPE:
                    typed["stream_idle_timeout"] = _seconds(stream_idle_timeout(heartbeat))
                    # No overall deadline for a request: Register lives as long as it is healthy.
                    typed["request_timeout"] = "0s"
                    typed["request_headers_timeout"] = _seconds(limits.request_header_timeout)
                    # Counts only while no stream is open on the connection.
                    options = typed.setdefault("common_http_protocol_options", {})
                    options["idle_timeout"] = _seconds(limits.idle_timeout)
                    # The app's ASGI `client` is the connection's own peer. Left at
                    # Envoy's default, it is taken from X-Forwarded-For, which any
                    # client writes: trusted proxies, per-peer log budgets and the
                    # audit trail would believe it. Headers are passed on unchanged.
                    typed["use_remote_address"] = True
                    typed["skip_xff_append"] = True
    # One cap for the whole process, checked before a connection reaches any filter.
    config["overload_manager"] = {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": DOWNSTREAM_CONNECTIONS_TYPE,
                    "max_active_downstream_connections": limits.max_connections,
                },
            }
        ]
    }
    return config


class GatewayEnvoyServer(PrivateAdminPyvoyServer):
    """pyvoy with the Envoy tuning Register streams need, admin on a private socket."""

    def __init__(
        self, app: str, *, heartbeat: float, limits: ListenerLimits, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._heartbeat = heartbeat
        self._limits = limits

    def get_envoy_config(self) -> dict[str, Any]:
        return tune_envoy_config(
            super().get_envoy_config(), heartbeat=self._heartbeat, limits=self._limits
        )


def envoy_server(config: GatewayConfig, control_socket: str) -> GatewayEnvoyServer:
    """The Envoy child for `config`: HTTP/1.1 + h2c on one port, or TLS with ALPN h2.

    The control socket's directory is private; Envoy's admin socket goes there too.
    """
    return GatewayEnvoyServer(
        ASGI_APP,
        private_dir=str(Path(control_socket).parent),
        heartbeat=config.heartbeat,
        limits=ListenerLimits.of(config),
        address=config.host,
        port=config.port,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        tls_ca_cert=config.tls_client_ca,
        tls_require_client_certificate=True,
        tls_enable_http3=False,
        lifespan=True,
        # One event loop: the registry is owned by a single loop, not shared by threads.
        worker_threads=1,
        log_level=_ENVOY_LOG_LEVELS[config.log_level],
        # Envoy's own clusters carry the passthrough's upstream calls (envoy_leg.py).
        upstreams=envoy_clusters(),
        env={**config.to_env(), CONTROL_SOCKET_ENV: control_socket, ENVOY_LEG_ENV: "1"},
        stdout=None,
        stderr=None,
    )


async def serve_pyvoy(config: GatewayConfig) -> int:
    """Run Envoy until SIGTERM/SIGINT (exit 0) or until it dies on its own (exit 1)."""
    with tempfile.TemporaryDirectory(prefix="flowwatch-gateway-") as private_dir:
        return await _supervise_envoy(config, str(Path(private_dir) / "control.sock"))


async def _supervise_envoy(config: GatewayConfig, control_socket: str) -> int:
    server = envoy_server(config, control_socket)

    def started() -> None:
        scheme = "https" if config.tls_enabled else "http"
        log.info(
            "flowwatch-gateway listening on %s://%s:%d (pyvoy: HTTP/1.1, HTTP/2%s)",
            scheme,
            server.listener_address,
            server.listener_port,
            ", mTLS" if config.tls_client_ca else "",
        )

    return await supervise_envoy(
        server,
        control_socket,
        drain_timeout=DRAIN_TIMEOUT_SECONDS,
        what=f"the gateway on {config.addr}",
        on_started=started,
        reload_on_hangup=True,
    )


async def supervise_envoy(
    server: PyvoyServer,
    control_socket: str,
    *,
    drain_timeout: float,
    what: str,
    on_started: Callable[[], None] | None = None,
    reload_on_hangup: bool = False,
) -> int:
    """Run an Envoy child until SIGTERM/SIGINT (exit 0) or until it dies (exit 1).

    On a requested stop the app is asked to drain over its control socket first,
    because Envoy cuts open streams the moment it gets SIGTERM itself. With
    `reload_on_hangup`, SIGHUP asks the app to read its policy file again.
    """
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    reloads: set[asyncio.Task[bool]] = set()
    if reload_on_hangup:

        def hang_up() -> None:
            task = loop.create_task(request_reload(control_socket))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, hang_up)
    try:
        await server.start()
    except StartupError:
        log.error("Envoy failed to start %s; see its log lines above", what)
        return 1
    if on_started is not None:
        on_started()
    envoy_exit = asyncio.create_task(server.wait())
    stop = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({envoy_exit, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not stop_requested.is_set():
        log.error("Envoy exited unexpectedly with status %s", envoy_exit.result())
        return 1
    log.info("stopping %s", what)
    await request_drain(control_socket, within=drain_timeout)
    await server.stop()
    status = await envoy_exit
    if status != 0:
        log.warning("Envoy exited with status %s during shutdown", status)
    log.info("stopped")
    return 0


def uvicorn_limits(limits: ListenerLimits) -> dict[str, Any]:
    """uvicorn's nearest settings: a cap (503 above it) and the keep-alive idle timeout.

    uvicorn (h11) has nothing that times request headers, nor a connection that has
    sent nothing yet: the keep-alive timer starts only after a response.
    """
    return {"limit_concurrency": limits.max_connections, "timeout_keep_alive": limits.idle_timeout}


def serve_uvicorn(config: GatewayConfig) -> int:
    """Serve the same app under uvicorn (HTTP/1.1 only)."""
    import uvicorn

    class GatewayUvicornServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process
            # would die by signal; a requested stop should exit 0, as under pyvoy.
            signals = (signal.SIGTERM, signal.SIGINT)
            previous = {signum: signal.signal(signum, self.handle_exit) for signum in signals}
            try:
                yield
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    from flowwatch_gateway.serving.app import create_app

    log.warning(
        "uvicorn serves HTTP/1.1 only: gRPC and the HTTP/2 Register stream do not work, "
        "so subsystems cannot register; and it cannot time request headers, so "
        "GATEWAY_REQUEST_HEADER_TIMEOUT does not apply. Use --server pyvoy for a real deployment"
    )
    options = uvicorn_limits(ListenerLimits.of(config))
    if config.tls_cert is not None and config.tls_key is not None:
        options["ssl_certfile"] = str(config.tls_cert)
        options["ssl_keyfile"] = str(config.tls_key)
    if config.tls_client_ca is not None:
        options["ssl_ca_certs"] = str(config.tls_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    server = GatewayUvicornServer(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            lifespan="on",
            log_config=None,
            timeout_graceful_shutdown=UVICORN_GRACEFUL_SHUTDOWN_SECONDS,
            **options,
        )
    )
    server.run()
    return 0 if server.started else 1


def serve(config: GatewayConfig) -> int:
    """Serve until stopped; returns the process exit status."""
    try:
        if config.server == "uvicorn":
            return serve_uvicorn(config)
        return asyncio.run(serve_pyvoy(config))
    finally:
        # pyqwest can abort during interpreter finalization (see exit_guard).
        exit_guard.install()
