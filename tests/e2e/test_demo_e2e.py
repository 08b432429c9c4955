"""Demo subsystem processes and `flowwatch-demo demo`, end to end with real processes.

Every subsystem is `flowwatch-demo subsystem` (pyvoy serving the in-memory API,
connect_to_gateway inside the Envoy process); the gateway is `flowwatch-gateway
serve`. What happens is observed through the gateway's public API, as the UI sees it.
Times are measured and printed (run with -s), never asserted as performance.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import (
    ROOT,
    GatewayProcess,
    SubsystemProcess,
    list_subsystems,
    start_gateway,
    start_subsystem,
    subsystem_states,
    wait_for_state,
)

HEARTBEAT = "300ms"
GRACE = "1500ms"
GRACE_SECONDS = 1.5
API_KEY = "demo-e2e-key"
# Reconnect fast enough to watch within a test.
FAST_RECONNECT = ("--min-backoff", "100ms", "--max-backoff", "500ms")


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def gateway() -> Iterator[GatewayProcess]:
    # A short upstream timeout keeps ListSubsystems quick while a subsystem is frozen.
    with start_gateway(
        "--heartbeat",
        HEARTBEAT,
        "--grace-period",
        GRACE,
        "--api-key",
        API_KEY,
        "--upstream-timeout",
        "500ms",
    ) as process:
        yield process


def list_runs(url: str, limit: int = 100) -> list[dict[str, object]]:
    response = httpx.post(
        f"{url}/flowwatch.v1.RunService/ListRuns",
        json={"pagination": {"limit": limit}},
        headers={"Connect-Protocol-Version": "1"},
        timeout=10.0,
    )
    response.raise_for_status()
    runs: list[dict[str, object]] = response.json().get("runs", [])
    return runs


def stale_reason(gateway: GatewayProcess, subsystem_id: str) -> str:
    marker = f"subsystem stale: id={subsystem_id} "
    logs = gateway.logs()
    assert marker in logs, f"{subsystem_id} was never marked stale:\n{logs[-3000:]}"
    return logs.rsplit(marker, 1)[1].splitlines()[0]


def test_subsystems_register_and_a_killed_one_goes_stale_then_is_removed(
    gateway: GatewayProcess,
) -> None:
    url = gateway.url
    orders, payments = unique_id("orders"), unique_id("payments")
    with (
        start_subsystem(url, orders, "--seed", "1", api_key=API_KEY) as first,
        start_subsystem(url, payments, "--seed", "2", api_key=API_KEY) as second,
    ):
        wait_for_state(url, orders, "connected", timeout=15)
        wait_for_state(url, payments, "connected", timeout=15)
        # The UI's run list through the gateway holds runs of both subsystems.
        owners = {run["subsystemId"] for run in list_runs(url)}
        assert {orders, payments} <= owners, owners

        first.kill()  # SIGKILL to the whole process group: supervisor and Envoy
        to_stale = wait_for_state(url, orders, "stale", timeout=5)
        to_removed = wait_for_state(url, orders, None, timeout=GRACE_SECONDS + 5)
        print(
            f"SIGKILL -> stale after {to_stale:.2f}s, removed {to_removed:.2f}s later "
            f"(heartbeat {HEARTBEAT}, grace {GRACE})"
        )
        assert to_removed >= GRACE_SECONDS * 0.5
        assert subsystem_states(url)[payments] == "connected"

        started = time.monotonic()
        status = second.stop(signal.SIGTERM)
        print(f"SIGTERM -> subsystem exit {status} after {time.monotonic() - started:.2f}s")
        assert status == 0, second.logs()
        wait_for_state(url, payments, "stale", timeout=5)
        # The subsystem left: its client closed the stream before Envoy went down.
        assert "reason=register stream ended" in stale_reason(gateway, payments)


def test_a_frozen_subsystem_goes_stale_by_missed_heartbeats_and_rejoins_when_resumed(
    gateway: GatewayProcess,
) -> None:
    url = gateway.url
    sid = unique_id("frozen")
    with start_subsystem(url, sid, *FAST_RECONNECT, api_key=API_KEY) as subsystem:
        wait_for_state(url, sid, "connected", timeout=15)
        os.killpg(subsystem.proc.pid, signal.SIGSTOP)  # the connection stays open
        try:
            to_stale = wait_for_state(url, sid, "stale", timeout=5)
            to_removed = wait_for_state(url, sid, None, timeout=GRACE_SECONDS + 5)
        finally:
            os.killpg(subsystem.proc.pid, signal.SIGCONT)
        # Removal sent a DisconnectCommand; once resumed the client reads it and rejoins.
        to_back = wait_for_state(url, sid, "connected", timeout=10)
        print(
            f"SIGSTOP -> stale after {to_stale:.2f}s (heartbeat {HEARTBEAT}), removed "
            f"{to_removed:.2f}s later; SIGCONT -> connected again after {to_back:.2f}s"
        )
        assert "reason=no pong" in stale_reason(gateway, sid)
        assert subsystem.stop(signal.SIGTERM) == 0, subsystem.logs()


def test_every_subsystem_reregisters_after_the_gateway_restarts_on_its_port() -> None:
    port = free_port()
    ids = [unique_id("orders"), unique_id("shipping")]
    gateway_args = ("--heartbeat", HEARTBEAT, "--grace-period", GRACE, "--api-key", API_KEY)
    with start_gateway(*gateway_args, port=port) as old_gateway:
        url = old_gateway.url
        subsystems: list[SubsystemProcess] = []
        try:
            for seed, sid in enumerate(ids):
                subsystems.append(
                    start_subsystem(url, sid, "--seed", str(seed), *FAST_RECONNECT, api_key=API_KEY)
                )
            for sid in ids:
                wait_for_state(url, sid, "connected", timeout=15)
            assert old_gateway.stop(signal.SIGTERM) == 0, old_gateway.logs()
            started = time.monotonic()
            with start_gateway(*gateway_args, port=port) as new_gateway:
                ready = time.monotonic() - started
                times = {sid: wait_for_state(url, sid, "connected", timeout=10) for sid in ids}
                print(
                    f"gateway restarted (ready {ready:.2f}s after the old one exited); "
                    + ", ".join(f"{sid} registered {t:.2f}s later" for sid, t in times.items())
                )
                assert "subsystem registered: id=" in new_gateway.logs()
            for subsystem in subsystems:
                assert subsystem.stop(signal.SIGTERM) == 0, subsystem.logs()
        finally:
            for subsystem in subsystems:
                subsystem.close()


def start_demo(gateway_port: int, subsystem_ports: list[int]) -> Child:
    """`flowwatch-demo demo` on the given ports, until it prints its instructions."""
    demo = Child(
        "demo",
        [
            sys.executable,
            "-m",
            "flowwatch_gateway.demo",
            "demo",
            "--port",
            str(gateway_port),
            "--api-key",
            API_KEY,
            "--subsystem-ports",
            ",".join(map(str, subsystem_ports)),
        ],
        cwd=ROOT,
    ).start()
    started = time.monotonic()
    try:
        demo.wait_for(lambda: "Press Ctrl-C to stop" in demo.logs(), 60, "ready")
    except BaseException:
        demo.close()
        raise
    print(f"demo ready after {time.monotonic() - started:.2f}s")
    return demo


def demo_children(demo: Child) -> dict[str, int]:
    """The launcher's children: 'gateway' or the subsystem id -> pid (Linux /proc)."""
    children = Path(f"/proc/{demo.pid}/task/{demo.pid}/children").read_text().split()
    found = {}
    for pid in map(int, children):
        with contextlib.suppress(FileNotFoundError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            found[argv[argv.index("--id") + 1] if "--id" in argv else "gateway"] = pid
    return found


def registrations(url: str) -> dict[str, tuple[str, str]]:
    """subsystem id -> (state, registration time) from ListSubsystems."""
    return {
        summary["subsystem"]["id"]: (
            summary["subsystem"].get("metadata", {}).get("gateway.state", ""),
            summary["subsystem"].get("createdAt", ""),
        )
        for summary in list_subsystems(url)
    }


def test_demo_command_registers_three_subsystems_and_sigint_stops_everything() -> None:
    gateway_port = free_port()
    subsystem_ports = [free_port() for _ in range(3)]
    with start_demo(gateway_port, subsystem_ports) as demo:
        url = f"http://127.0.0.1:{gateway_port}"
        assert subsystem_states(url) == {
            "orders": "connected",
            "payments": "connected",
            "shipping": "connected",
        }
        text = demo.logs()
        assert f"VITE_API_URL=http://localhost:{gateway_port}" in text
        assert f"http://localhost:{gateway_port}/flowwatch.v1.RunService/ListRuns" in text
        assert "http://localhost:5173" in text
        assert API_KEY not in text

        started = time.monotonic()
        # 20 s, then SIGKILL: the launcher stops its own children first.
        status = demo.stop(signal.SIGINT, timeout=20)
        print(f"SIGINT -> demo exit {status} after {time.monotonic() - started:.2f}s")
        assert status == 0, demo.logs()
        for port in [gateway_port, *subsystem_ports]:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)


@pytest.mark.slow
def test_demo_restarts_a_killed_subsystem_and_stops_when_the_gateway_dies() -> None:
    gateway_port = free_port()
    subsystem_ports = [free_port() for _ in range(3)]
    url = f"http://127.0.0.1:{gateway_port}"
    with start_demo(gateway_port, subsystem_ports) as demo:
        before = demo_children(demo)
        assert set(before) == {"gateway", "orders", "payments", "shipping"}, before
        registered = registrations(url)
        assert {state for state, _ in registered.values()} == {"connected"}

        os.kill(before["orders"], signal.SIGKILL)  # the supervisor only, as `kill -9` would
        demo.wait_for(
            lambda: (
                registrations(url).get("orders", ("", ""))[0] == "connected"
                and registrations(url)["orders"][1] != registered["orders"][1]
            ),
            60,
            "showing orders registered again",
        )
        after = demo_children(demo)
        assert after["orders"] != before["orders"]
        others = ("gateway", "payments", "shipping")
        assert {name: after[name] for name in others} == {name: before[name] for name in others}
        now = registrations(url)
        assert {sid: now[sid] for sid in ("payments", "shipping")} == {
            sid: registered[sid] for sid in ("payments", "shipping")
        }
        logs = demo.logs()
        assert "orders exited unexpectedly with status -9; restarting it in 2s" in logs
        assert f"orders restarted (pid {after['orders']})" in logs

        os.kill(before["gateway"], signal.SIGKILL)
        assert demo.proc.wait(60) == 1, demo.logs()
        assert "gateway exited unexpectedly with status -9; stopping the demo" in demo.logs()
        for port in [gateway_port, *subsystem_ports]:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
