"""One demo subsystem process: the in-memory FlowWatch API, registered with a gateway.

`flowwatch-demo subsystem` supervises an Envoy child (pyvoy) that serves the demo
app; the app itself runs inside Envoy, so the gateway client runs there too, started
and stopped by the app's lifespan. Settings reach Envoy as environment variables,
exactly like the gateway's own configuration does.

Stopping: Envoy resets every open stream as soon as it gets SIGTERM, so the
supervisor first asks the app over a private Unix socket (control.py) to stop its
gateway client, which half-closes the Register stream and lets the gateway see a clean
end; only then is Envoy stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette

from flowwatch_gateway import Backoff, ClientOptions, connect_to_gateway, exit_guard
from flowwatch_gateway.config import format_go_duration, parse_go_duration
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.serving.control import CONTROL_SOCKET_ENV, serve_control_socket
from flowwatch_gateway.serving.envoy_admin import PrivateAdminPyvoyServer
from flowwatch_gateway.serving.server import supervise_envoy

log = logging.getLogger(__name__)

ASGI_APP = "flowwatch_gateway.demo.asgi:app"
ENV_PREFIX = "FLOWWATCH_DEMO_"
# Where a subsystem process finds its gateway key, so it never shows up in `ps`.
API_KEY_ENV = "FLOWWATCH_GATEWAY_API_KEY"
# Upper bound for the app to close its Register stream before Envoy is stopped anyway.
LEAVE_TIMEOUT_SECONDS = 5.0
# How long the app waits for its own listener before announcing itself anyway.
LOCAL_READY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SubsystemSettings:
    """Everything one demo subsystem process needs, validated on construction."""

    subsystem_id: str
    port: int
    gateway_url: str = "http://127.0.0.1:8091"
    host: str = "127.0.0.1"
    api_key: str = field(default="", repr=False)
    seed: int = 0
    # The URL the gateway calls back; empty means http://<host>:<port>.
    endpoint: str = ""
    min_backoff: float = 1.0
    max_backoff: float = 30.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        # ClientOptions checks the id, the URLs and the backoff and says what is wrong.
        self.client_options()

    @property
    def local_endpoint(self) -> str:
        if self.endpoint:
            return self.endpoint
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def client_options(self) -> ClientOptions:
        return ClientOptions(
            gateway_url=self.gateway_url,
            subsystem_id=self.subsystem_id,
            local_endpoint=self.local_endpoint,
            api_key=self.api_key,
            backoff=Backoff(initial=self.min_backoff, maximum=self.max_backoff),
        )

    def to_env(self) -> dict[str, str]:
        """Environment variables from which `from_env` rebuilds these settings in Envoy."""
        return {
            f"{ENV_PREFIX}SUBSYSTEM_ID": self.subsystem_id,
            f"{ENV_PREFIX}PORT": str(self.port),
            f"{ENV_PREFIX}GATEWAY_URL": self.gateway_url,
            f"{ENV_PREFIX}HOST": self.host,
            f"{ENV_PREFIX}SEED": str(self.seed),
            f"{ENV_PREFIX}ENDPOINT": self.endpoint,
            f"{ENV_PREFIX}MIN_BACKOFF": format_go_duration(self.min_backoff),
            f"{ENV_PREFIX}MAX_BACKOFF": format_go_duration(self.max_backoff),
            f"{ENV_PREFIX}LOG_LEVEL": self.log_level,
            API_KEY_ENV: self.api_key,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SubsystemSettings:
        def get(name: str) -> str:
            key = f"{ENV_PREFIX}{name}"
            if key not in env:
                raise ValueError(f"{key} is not set; start the process with flowwatch-demo")
            return env[key]

        return cls(
            subsystem_id=get("SUBSYSTEM_ID"),
            port=int(get("PORT")),
            gateway_url=get("GATEWAY_URL"),
            host=get("HOST"),
            api_key=env.get(API_KEY_ENV, ""),
            seed=int(get("SEED")),
            endpoint=get("ENDPOINT"),
            min_backoff=parse_go_duration(get("MIN_BACKOFF")),
            max_backoff=parse_go_duration(get("MAX_BACKOFF")),
            log_level=get("LOG_LEVEL"),
        )


# --- inside Envoy: the app -------------------------------------------------------------------


async def wait_until_serving(url: str, within: float) -> bool:
    """Poll GET <url>/healthz: the lifespan starts before the listener takes connections."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url.rstrip('/')}/healthz")).status_code == 200:
                    return True
            await asyncio.sleep(0.05)
    return False


def create_subsystem_app(
    settings: SubsystemSettings, *, control_socket: str | None = None
) -> Starlette:
    """The demo app for `settings`, holding its gateway registration for its lifetime."""
    engine = InMemoryEngine.demo(settings.subsystem_id, seed=settings.seed)
    demo_app = create_demo_app(engine)

    async def hold_registration() -> None:
        if not await wait_until_serving(settings.local_endpoint, LOCAL_READY_TIMEOUT_SECONDS):
            log.warning("%s does not answer yet; registering anyway", settings.local_endpoint)
        await connect_to_gateway(settings.client_options())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info(
            "demo subsystem %s (seed %d) serving %s, registering with %s",
            settings.subsystem_id,
            settings.seed,
            settings.local_endpoint,
            settings.gateway_url,
        )
        client = asyncio.create_task(hold_registration(), name="gateway-client")

        async def leave_gateway() -> None:
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)

        control = None
        if control_socket is not None:
            control = await serve_control_socket(control_socket, leave_gateway)
        try:
            yield
        finally:
            await leave_gateway()
            if control is not None:
                control.close()
            log.info("demo subsystem %s stopped", settings.subsystem_id)

    return Starlette(routes=demo_app.routes, lifespan=lifespan)


# --- the supervising process ---------------------------------------------------------------


def envoy_server(settings: SubsystemSettings, control_socket: str) -> PrivateAdminPyvoyServer:
    """Envoy serving the demo app on one port: HTTP/1.1 and h2c.

    The control socket's directory is private; Envoy's admin socket goes there too.
    """
    return PrivateAdminPyvoyServer(
        ASGI_APP,
        private_dir=str(Path(control_socket).parent),
        address=settings.host,
        port=settings.port,
        lifespan=True,
        # The engine's state lives on one event loop.
        worker_threads=1,
        log_level="warning",
        env={**settings.to_env(), CONTROL_SOCKET_ENV: control_socket},
        stdout=None,
        stderr=None,
    )


def run_subsystem(settings: SubsystemSettings) -> int:
    """Serve until stopped; returns the process exit status."""
    try:
        return asyncio.run(serve_subsystem(settings))
    finally:
        # pyqwest can abort during interpreter finalization (see exit_guard).
        exit_guard.install()


async def serve_subsystem(settings: SubsystemSettings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until Envoy dies on its own (exit 1)."""
    with tempfile.TemporaryDirectory(prefix="flowwatch-subsystem-") as private_dir:
        return await _supervise(settings, str(Path(private_dir) / "control.sock"))


async def _supervise(settings: SubsystemSettings, control_socket: str) -> int:
    return await supervise_envoy(
        envoy_server(settings, control_socket),
        control_socket,
        drain_timeout=LEAVE_TIMEOUT_SECONDS,
        what=f"demo subsystem {settings.subsystem_id} on {settings.host}:{settings.port}",
    )
