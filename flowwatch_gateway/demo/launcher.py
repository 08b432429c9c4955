"""`flowwatch-gateway demo`: a gateway and three demo subsystems, each its own process.

The subsystems register through the real client (connect_to_gateway), so the demo
shows exactly what a deployment does. Every child runs in its own session: Ctrl-C
reaches only this launcher, which then stops the subsystems first (they leave the
gateway cleanly) and the gateway last, each with SIGTERM, and SIGKILL if it hangs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

import httpx

from flowwatch_gateway.demo.process import API_KEY_ENV

DEMO_SUBSYSTEMS = ("orders", "payments", "shipping")
REGISTRATION_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
EXIT_FAILED = 1


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


@dataclass
class Child:
    """One child process, started in its own session so the terminal's Ctrl-C skips it."""

    name: str
    proc: subprocess.Popen[bytes]

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> int:
        try:
            return self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in time; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def _spawn(name: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
    command = [sys.executable, "-m", "flowwatch_gateway.cli", *args]
    # Children log to stderr; this launcher's stdout carries only the instructions.
    proc = subprocess.Popen(command, env=dict(env), stdout=sys.stderr, start_new_session=True)
    return Child(name, proc)


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
        gateway = _spawn("gateway", _gateway_command(settings), gateway_env)
        subsystem_env = {**os.environ, API_KEY_ENV: settings.api_key}
        for seed, (sid, port) in enumerate(
            zip(DEMO_SUBSYSTEMS, settings.subsystem_ports, strict=True), start=1
        ):
            subsystems.append(
                _spawn(sid, _subsystem_command(settings, sid, port, seed), subsystem_env)
            )
        children = [gateway, *subsystems]
        if not _wait_for_registrations(settings, children, stop):
            return EXIT_FAILED if not stop.event.is_set() else 0
        print(instructions(settings), flush=True)
        while not stop.event.wait(POLL_SECONDS):
            dead = [child for child in children if child.proc.poll() is not None]
            if dead:
                for child in dead:
                    print(
                        f"{child.name} exited unexpectedly with status {child.proc.returncode}; "
                        "stopping the demo",
                        file=sys.stderr,
                    )
                return EXIT_FAILED
        return 0
    finally:
        _stop_all(subsystems, gateway)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
            if child.proc.poll() is not None:
                print(
                    f"{child.name} exited with status {child.proc.returncode} during startup; "
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
    for child in subsystems:
        child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in subsystems:
        child.wait_or_kill(deadline)
    if gateway is not None:
        gateway.terminate()
        gateway.wait_or_kill(time.monotonic() + STOP_TIMEOUT_SECONDS)
