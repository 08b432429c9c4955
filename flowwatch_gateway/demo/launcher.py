"""`flowwatch-demo demo`: a gateway and three demo subsystems, each its own process.

The subsystems register through the real client (connect_to_gateway), so the demo
shows exactly what a deployment does. Every child runs in its own session: Ctrl-C
reaches only this launcher, which then stops the subsystems first (they leave the
gateway cleanly) and the gateway last, each with SIGTERM, and SIGKILL if it hangs.

Failure semantics: a subsystem that dies is logged and restarted after a delay that
doubles per quick failure (bounded), while the gateway and the other subsystems keep
running, as one workflow system failing would in a deployment. The gateway dying
stops the demo: without it there is nothing to show.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

import httpx

from flowwatch_gateway.demo.process import API_KEY_ENV
from flowwatch_gateway.processes import Child, stop_together

DEMO_SUBSYSTEMS = ("orders", "payments", "shipping")
REGISTRATION_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
EXIT_FAILED = 1
# Restart delays of a dead subsystem: 2 s, 4 s, 8 s, ... up to 30 s. A subsystem that
# ran for STABLE_SECONDS before dying starts again from the first delay; one that died
# MAX_QUICK_RESTARTS times in a row without getting that far is left down.
FIRST_RESTART_DELAY_SECONDS = 2.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 60.0
MAX_QUICK_RESTARTS = 5


@dataclass(frozen=True)
class DemoSettings:
    host: str = "127.0.0.1"
    port: int = 8091
    api_key: str = field(default="", repr=False)
    ui_origin: str = "http://localhost:5173"
    subsystem_ports: tuple[int, ...] = (9101, 9102, 9103)

    def __post_init__(self) -> None:
        ports = (self.port, *self.subsystem_ports)
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"ports must be between 1 and 65535, got {port}")
        if len(self.subsystem_ports) != len(DEMO_SUBSYSTEMS):
            raise ValueError(
                f"--subsystem-ports needs {len(DEMO_SUBSYSTEMS)} ports "
                f"({', '.join(DEMO_SUBSYSTEMS)}), got {len(self.subsystem_ports)}"
            )
        if len(set(ports)) != len(ports):
            raise ValueError(f"the gateway and subsystem ports must differ, got {ports}")

    @classmethod
    def from_args(
        cls, *, host: str, port: int, api_key: str, ui_origin: str, subsystem_ports: str
    ) -> DemoSettings:
        try:
            ports = tuple(int(part) for part in subsystem_ports.split(",") if part.strip())
        except ValueError:
            raise ValueError(
                f"--subsystem-ports must be comma-separated port numbers such as "
                f"9101,9102,9103, got {subsystem_ports!r}"
            ) from None
        return cls(
            host=host, port=port, api_key=api_key, ui_origin=ui_origin, subsystem_ports=ports
        )

    @property
    def gateway_url(self) -> str:
        """Where the subsystems (and this launcher) reach the gateway."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def browser_url(self) -> str:
        """What to give the UI: localhost, the name the default UI origin uses too."""
        if self.host in ("127.0.0.1", "0.0.0.0", "", "::", "localhost"):
            return f"http://localhost:{self.port}"
        return self.gateway_url


def _spawn(name: str, module: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
    # Children log to stderr; this launcher's stdout carries only the instructions.
    command = [sys.executable, "-m", module, *args]
    return Child(name, command, env=env, output=sys.stderr).start()


def _gateway_command(settings: DemoSettings) -> list[str]:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return ["serve", "--addr", f"{host}:{settings.port}", "--ui-origin", settings.ui_origin]


def _subsystem_command(
    settings: DemoSettings, subsystem_id: str, port: int, seed: int
) -> list[str]:
    return [
        "subsystem",
        "--id",
        subsystem_id,
        "--port",
        str(port),
        "--gateway",
        settings.gateway_url,
        "--seed",
        str(seed),
    ]


def restart_delay(quick_failures: int) -> float:
    """Seconds before restart number `quick_failures` (1-based) of a subsystem."""
    exponent = max(0, quick_failures - 1)
    return min(FIRST_RESTART_DELAY_SECONDS * 2.0**exponent, MAX_RESTART_DELAY_SECONDS)


@dataclass
class _Supervised:
    """A demo subsystem and what its restarts need to know."""

    child: Child
    started_at: float = field(default_factory=time.monotonic)
    quick_failures: int = 0
    restart_at: float | None = None
    given_up: bool = False
    awaiting_registration: bool = False

    def check(self, now: float) -> None:
        """Notice a death and schedule a restart; restart when it is due."""
        child = self.child
        if self.given_up:
            return
        if self.restart_at is None:
            if child.running:
                return
            if now - self.started_at >= STABLE_SECONDS:
                self.quick_failures = 0
            self.quick_failures += 1
            self.awaiting_registration = False
            if self.quick_failures > MAX_QUICK_RESTARTS:
                self.given_up = True
                print(
                    f"{child.name} exited with status {child.returncode} "
                    f"{MAX_QUICK_RESTARTS + 1} times in a row; leaving it down "
                    "(the gateway and the other subsystems keep running)",
                    file=sys.stderr,
                    flush=True,
                )
                return
            delay = restart_delay(self.quick_failures)
            print(
                f"{child.name} exited unexpectedly with status {child.returncode}; "
                f"restarting it in {delay:g}s",
                file=sys.stderr,
                flush=True,
            )
            self.restart_at = now + delay
            return
        if now >= self.restart_at:
            # Its Envoy may have outlived it (e.g. `kill -9` of the supervisor alone)
            # and would keep the port.
            child.kill()
            child.start()
            self.started_at = now
            self.restart_at = None
            self.awaiting_registration = True
            print(f"{child.name} restarted (pid {child.pid})", file=sys.stderr, flush=True)


def connected_subsystems(gateway_url: str) -> set[str]:
    """Ids the gateway lists as connected (ListSubsystems, as the UI calls it)."""
    response = httpx.post(
        f"{gateway_url}/flowwatch.v1.WorkflowService/ListSubsystems",
        json={},
        headers={"Connect-Protocol-Version": "1"},
        timeout=5.0,
    )
    response.raise_for_status()
    return {
        summary["subsystem"]["id"]
        for summary in response.json().get("subsystems", [])
        if summary["subsystem"].get("metadata", {}).get("gateway.state") == "connected"
    }


def instructions(settings: DemoSettings) -> str:
    url = settings.browser_url
    subsystems = ", ".join(
        f"{sid} (http://127.0.0.1:{port})"
        for sid, port in zip(DEMO_SUBSYSTEMS, settings.subsystem_ports, strict=True)
    )
    return f"""
FlowWatch gateway demo is running.

  Gateway (FlowWatch API):  {url}
  Subsystems registered:    {subsystems}
  UI origin allowed (CORS): {settings.ui_origin}

Point the FlowWatch UI at the gateway, e.g. in the UI's checkout:
  VITE_API_URL={url} npm run dev
and open {settings.ui_origin} (use --ui-origin if your UI runs elsewhere).

Or ask the API directly (Connect JSON over HTTP POST):
  curl -s -X POST {url}/flowwatch.v1.RunService/ListRuns \\
    -H 'Content-Type: application/json' -H 'Connect-Protocol-Version: 1' \\
    -d '{{"pagination": {{"limit": 5}}}}'

Press Ctrl-C to stop.
"""


class _StopSignal:
    """SIGINT/SIGTERM set an event the launcher's loops poll."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()


def run_demo(settings: DemoSettings) -> int:
    """Start everything, wait for the registrations, run until signalled; exit status."""
    stop = _StopSignal()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    gateway: Child | None = None
    subsystems: list[Child] = []
    try:
        gateway_env = {**os.environ, "GATEWAY_API_KEY": settings.api_key}
        gateway = _spawn(
            "gateway", "flowwatch_gateway.cli", _gateway_command(settings), gateway_env
        )
        subsystem_env = {**os.environ, API_KEY_ENV: settings.api_key}
        for seed, (sid, port) in enumerate(
            zip(DEMO_SUBSYSTEMS, settings.subsystem_ports, strict=True), start=1
        ):
            command = _subsystem_command(settings, sid, port, seed)
            subsystems.append(_spawn(sid, "flowwatch_gateway.demo", command, subsystem_env))
        if not _wait_for_registrations(settings, [gateway, *subsystems], stop):
            return EXIT_FAILED if not stop.event.is_set() else 0
        print(instructions(settings), flush=True)
        return _supervise(settings, gateway, [_Supervised(child) for child in subsystems], stop)
    finally:
        _stop_all(subsystems, gateway)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(
    settings: DemoSettings, gateway: Child, subsystems: list[_Supervised], stop: _StopSignal
) -> int:
    """Until signalled (exit 0) or the gateway dies (exit 1): restart dead subsystems."""
    while not stop.event.wait(POLL_SECONDS):
        if not gateway.running:
            print(
                f"gateway exited unexpectedly with status {gateway.returncode}; stopping the demo",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_FAILED
        now = time.monotonic()
        for subsystem in subsystems:
            subsystem.check(now)
        waiting = [s for s in subsystems if s.awaiting_registration]
        if waiting:
            with contextlib.suppress(httpx.HTTPError):
                connected = connected_subsystems(settings.gateway_url)
                for subsystem in waiting:
                    if subsystem.child.name in connected:
                        subsystem.awaiting_registration = False
                        print(f"{subsystem.child.name} registered again", file=sys.stderr)
    return 0


def _wait_for_registrations(
    settings: DemoSettings, children: list[Child], stop: _StopSignal
) -> bool:
    """Poll ListSubsystems until all demo subsystems are connected; False on failure/stop."""
    deadline = time.monotonic() + REGISTRATION_TIMEOUT_SECONDS
    wanted = set(DEMO_SUBSYSTEMS)
    connected: set[str] = set()
    while time.monotonic() < deadline:
        if stop.event.is_set():
            return False
        for child in children:
            if not child.running:
                print(
                    f"{child.name} exited with status {child.returncode} during startup; "
                    "see its log above",
                    file=sys.stderr,
                )
                return False
        with contextlib.suppress(httpx.HTTPError):
            connected = connected_subsystems(settings.gateway_url)
            if wanted <= connected:
                return True
        stop.event.wait(POLL_SECONDS)
    missing = ", ".join(sorted(wanted - connected))
    print(
        f"not registered after {REGISTRATION_TIMEOUT_SECONDS:g}s: {missing}; stopping the demo",
        file=sys.stderr,
    )
    return False


def _stop_all(subsystems: list[Child], gateway: Child | None) -> None:
    """Subsystems first (they leave the gateway cleanly), then the gateway."""
    stop_together(subsystems, STOP_TIMEOUT_SECONDS)
    if gateway is not None:
        gateway.stop(timeout=STOP_TIMEOUT_SECONDS)
    for child in [*subsystems, *([gateway] if gateway is not None else [])]:
        child.close()
