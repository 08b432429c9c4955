"""Test harness: real gateway processes and real subsystem clients on loopback.

Use from tests:

    from tests.support.harness import start_gateway, register_client, list_subsystem_states

    with start_gateway("--heartbeat", "200ms", "--grace-period", "1s") as gw:
        ...                      # gw.url, gw.port, gw.proc, gw.logs()
        assert gw.stop() == 0    # SIGTERM, wait (SIGKILL past the timeout), exit status

Run as a script it is a minimal subsystem that registers, answers pings and prints
each event on stdout (for tests that need a subsystem in its own process, to kill or
freeze it):

    python -m tests.support.harness subsystem --gateway URL --id ID [--endpoint URL] [--api-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyqwest
from connectrpc.protocol import ProtocolType

from flowwatch_gateway import exit_guard
from flowwatch_gateway.gen.flowwatch.v1 import (
    gateway_service_connect,
    gateway_service_pb2,
)
from flowwatch_gateway.processes import Child, child_env, free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
# The key fast_gateway (tests/e2e/conftest.py) requires from subsystems.
TEST_API_KEY = "test-key-1234"


class GatewayProcess(Child):
    """A `flowwatch-gateway serve` subprocess, started at once in its own process group.

    The group matters: under pyvoy the gateway has an Envoy child, and teardown must
    not leave it behind. Used as a context manager, it shows its logs when the block
    fails and is killed on the way out.
    """

    def __init__(
        self, command: list[str], env: Mapping[str, str], port: int, name: str = "gateway"
    ) -> None:
        super().__init__(name, command, env=env, cwd=ROOT)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.start()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll /readyz until 200; fail with the logs if the process dies or never gets ready."""
        self.wait_http_ok(f"{self.url}/readyz", timeout)


def start_gateway(
    *args: str,
    env: Mapping[str, str] | None = None,
    server: str = "pyvoy",
    port: int | None = None,
    wait: bool = True,
) -> GatewayProcess:
    """Start `flowwatch-gateway serve --addr 127.0.0.1:PORT --server SERVER ARGS...`.

    Waits for /readyz unless wait=False. Use as a context manager so the process group
    is killed on teardown whatever happens.
    """
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "flowwatch_gateway.cli",
        "serve",
        "--addr",
        f"127.0.0.1:{port}",
        "--server",
        server,
        *args,
    ]
    gateway = GatewayProcess(command, child_env(env), port)
    if wait:
        try:
            gateway.wait_ready()
        except BaseException:
            gateway.close()
            raise
    return gateway


class FakeClock:
    """A registry Clock that moves only when told to (`advance`)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds


# --- observing the gateway as the UI does -------------------------------------------------


def list_subsystems(url: str, token: str | None = None) -> list[dict[str, Any]]:
    """ListSubsystems over Connect JSON / HTTP/1.1, exactly like the FlowWatch UI calls it
    (with a bearer token, for a gateway that needs one)."""
    headers = {"Connect-Protocol-Version": "1"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.post(
        f"{url}/flowwatch.v1.WorkflowService/ListSubsystems",
        json={},
        headers=headers,
        timeout=5.0,
    )
    response.raise_for_status()
    subsystems: list[dict[str, Any]] = response.json().get("subsystems", [])
    return subsystems


def subsystem_states(url: str, token: str | None = None) -> dict[str, str]:
    """subsystem id -> gateway.state ("connected" / "stale"), as ListSubsystems shows it."""
    states = {}
    for summary in list_subsystems(url, token):
        subsystem = summary["subsystem"]
        states[subsystem["id"]] = subsystem.get("metadata", {}).get("gateway.state", "")
    return states


def wait_for_state(
    url: str,
    subsystem_id: str,
    state: str | None,
    timeout: float = 10.0,
    token: str | None = None,
) -> float:
    """Poll until the subsystem shows `state` (None = gone); return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last: dict[str, str] = {}
    while time.monotonic() < deadline:
        last = subsystem_states(url, token)
        if last.get(subsystem_id) == state:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{subsystem_id} never became {state!r} in {timeout}s; last: {last}")


async def await_state(
    url: str, subsystem_id: str, state: str | None, within: float = 10.0
) -> float:
    """wait_for_state for async tests: polls in a thread so open streams keep running."""
    return await asyncio.to_thread(wait_for_state, url, subsystem_id, state, within)


# --- a subsystem's side of Register ------------------------------------------------------


def register_request(
    subsystem_id: str,
    *,
    endpoint: str = "http://127.0.0.1:9/flowwatch",
    api_key: str = "",
    name: str = "",
    **fields: Any,
) -> gateway_service_pb2.SubsystemMessage:
    return gateway_service_pb2.SubsystemMessage(
        register=gateway_service_pb2.RegisterRequest(
            subsystem_id=subsystem_id,
            subsystem_name=name or subsystem_id,
            api_key=api_key,
            flowwatch_endpoint=endpoint,
            **fields,
        )
    )


def pong() -> gateway_service_pb2.SubsystemMessage:
    message = gateway_service_pb2.SubsystemMessage()
    message.pong.timestamp.FromDatetime(datetime.now(UTC))
    return message


@dataclass
class RegisterStream:
    """One open Register stream: what the gateway sent, and a way to send more.

    With auto_pong every ping is answered; `received` holds every GatewayMessage.
    """

    outgoing: asyncio.Queue[gateway_service_pb2.SubsystemMessage | None]
    received: list[gateway_service_pb2.GatewayMessage] = field(default_factory=list)
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    auto_pong: bool = True
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(self, message: gateway_service_pb2.SubsystemMessage) -> None:
        await self.outgoing.put(message)

    async def close_send(self) -> None:
        """Half-close: the subsystem will send nothing more."""
        await self.outgoing.put(None)

    def kinds(self) -> list[str]:
        return [m.WhichOneof("msg") or "" for m in self.received]

    async def wait_for(self, kind: str, count: int = 1, within: float = 10.0) -> None:
        """Wait until `count` messages of this kind (registered/ping/disconnect) arrived."""

        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(
                    lambda: self.kinds().count(kind) >= count or self.done.is_set()
                )

        await asyncio.wait_for(arrived(), within)
        if self.kinds().count(kind) < count:
            raise AssertionError(
                f"stream ended after {self.kinds()} before {count} x {kind}: {self.error!r}"
            )

    async def wait_done(self, within: float = 10.0) -> None:
        await asyncio.wait_for(self.done.wait(), within)

    async def _record(self, message: gateway_service_pb2.GatewayMessage) -> None:
        self.received.append(message)
        if self.auto_pong and message.WhichOneof("msg") == "ping":
            await self.outgoing.put(pong())
        async with self._arrived:
            self._arrived.notify_all()

    async def _finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        async with self._arrived:
            self._arrived.notify_all()


def http2_client() -> pyqwest.Client:
    """A pyqwest client speaking HTTP/2 with prior knowledge (h2c), as Register needs."""
    return pyqwest.Client(pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2))


@contextlib.asynccontextmanager
async def register_client(
    url: str,
    first: gateway_service_pb2.SubsystemMessage,
    *,
    protocol: ProtocolType = ProtocolType.CONNECT,
    auto_pong: bool = True,
) -> AsyncIterator[RegisterStream]:
    """Open a Register stream with connectrpc's generated client over HTTP/2.

    Sends `first`, then whatever the test queues; leaving the block half-closes the
    stream and waits (briefly) for it to end.
    """
    stream = RegisterStream(outgoing=asyncio.Queue(), auto_pong=auto_pong)
    await stream.outgoing.put(first)

    async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
        while (message := await stream.outgoing.get()) is not None:
            yield message

    client = gateway_service_connect.GatewayServiceClient(
        url, http_client=http2_client(), protocol=protocol, send_compression=None
    )

    async def consume() -> None:
        error: BaseException | None = None
        try:
            async for message in client.register(requests()):
                await stream._record(message)
        except Exception as exc:
            error = exc
        await stream._finish(error)

    task = asyncio.create_task(consume())
    try:
        yield stream
    finally:
        await stream.close_send()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stream.done.wait()), 3.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --- `python -m tests.support.harness subsystem ...` ---------------------------------------------


async def _run_subsystem(args: argparse.Namespace) -> int:
    first = register_request(args.id, endpoint=args.endpoint, api_key=args.api_key)
    async with register_client(args.gateway, first) as stream:
        seen = 0

        def news() -> bool:
            return len(stream.received) > seen or stream.done.is_set()

        while True:
            async with stream._arrived:
                await stream._arrived.wait_for(news)
            for message in stream.received[seen:]:
                kind = message.WhichOneof("msg")
                if kind == "registered":
                    print(f"REGISTERED accepted={message.registered.accepted}", flush=True)
                elif kind == "ping":
                    print("PING", flush=True)
                elif kind == "disconnect":
                    print(f"DISCONNECT {message.disconnect.reason}", flush=True)
            seen = len(stream.received)
            if stream.done.is_set():
                print(f"ENDED {stream.error!r}", flush=True)
                return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="A minimal subsystem for gateway tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    subsystem = commands.add_parser("subsystem")
    subsystem.add_argument("--gateway", required=True)
    subsystem.add_argument("--id", required=True)
    subsystem.add_argument("--endpoint", default="http://127.0.0.1:9/flowwatch")
    subsystem.add_argument("--api-key", default="")
    status = asyncio.run(_run_subsystem(parser.parse_args()))
    exit_guard.install()  # pyqwest may abort during interpreter finalization otherwise
    return status


if __name__ == "__main__":
    sys.exit(main())


# --- demo subsystem processes (`flowwatch-demo subsystem`) ---------------------------------


class SubsystemProcess(GatewayProcess):
    """A demo subsystem process: the in-memory API under pyvoy plus connect_to_gateway."""

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll the demo API's /healthz until 200 (registration is checked separately)."""
        self.wait_http_ok(f"{self.url}/healthz", timeout)


def start_subsystem(
    gateway_url: str,
    subsystem_id: str,
    *args: str,
    api_key: str = "",
    port: int | None = None,
    wait: bool = True,
) -> SubsystemProcess:
    """Start `flowwatch-demo subsystem --id ID --port PORT --gateway URL ARGS...`.

    The API key travels in the environment, as a deployment would pass it.
    """
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "flowwatch_gateway.demo",
        "subsystem",
        "--id",
        subsystem_id,
        "--port",
        str(port),
        "--gateway",
        gateway_url,
        *args,
    ]
    subsystem = SubsystemProcess(
        command, child_env({"FLOWWATCH_GATEWAY_API_KEY": api_key}), port, name=subsystem_id
    )
    if wait:
        try:
            subsystem.wait_ready()
        except BaseException:
            subsystem.close()
            raise
    return subsystem
