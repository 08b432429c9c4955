"""A dishonest client or subsystem against the real gateway under pyvoy, on loopback.

- Envoy's admin interface has no TCP port, so no registered endpoint reaches it: the
  test registers every TCP port the gateway's processes listen on, plus
  `/quitquitquit`-style URLs, and the gateway stays ready.
- An endpoint that would choose the gateway's request path is refused on the real
  Register stream, with a reason the registrant can act on.
- Slow clients are closed (request-header timeout), idle connections too (idle
  timeout), connections above the cap are refused, while normal requests and a
  quiet Register stream carry on.

Conditions are polled with generous deadlines; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.processes import free_port
from flowwatch_gateway.serving.envoy_admin import admin_get
from tests.support.harness import (
    GatewayProcess,
    list_subsystems,
    register_client,
    register_request,
    start_gateway,
    subsystem_states,
)

pytestmark = pytest.mark.anyio

DEADLINE_S = 30.0
POLL_S = 0.1


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until it holds; fail after a generous deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {DEADLINE_S}s: {what}")
        await asyncio.sleep(POLL_S)


# --- what the gateway's processes listen on ------------------------------------------------


def _process_tree(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += _process_tree(int(child))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_tcp_ports(gateway: GatewayProcess) -> set[int]:
    """Every TCP port in LISTEN state whose socket the gateway or its children hold."""
    ports = set()
    for pid in _process_tree(gateway.proc.pid):
        inodes = _socket_inodes(pid)
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def unix_socket_paths(gateway: GatewayProcess) -> set[str]:
    paths = set()
    for pid in _process_tree(gateway.proc.pid):
        inodes = _socket_inodes(pid)
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 7 and fields[6] in inodes:
                paths.add(fields[7])
    return paths


def ready(gateway: GatewayProcess) -> bool:
    return gateway.proc.poll() is None and httpx.get(f"{gateway.url}/readyz").status_code == 200


async def test_no_registered_endpoint_reaches_envoy_admin_and_the_gateway_stays_up() -> None:
    metrics_port = free_port()
    with start_gateway("--metrics-addr", f"127.0.0.1:{metrics_port}") as gateway:
        ports = listening_tcp_ports(gateway)
        # The API and the operator pages, nothing else: no admin port to find.
        assert ports == {gateway.port, metrics_port}, ports

        paths = unix_socket_paths(gateway)
        assert not [p for p in paths if p.startswith("@")], paths  # no abstract sockets
        (admin,) = [Path(p) for p in paths if p.endswith("envoy-admin.sock")]
        assert stat.S_IMODE(admin.stat().st_mode) == 0o600
        directory = admin.parent.stat()
        assert directory.st_uid == os.getuid() and stat.S_IMODE(directory.st_mode) == 0o700
        # Still there for the gateway's own user.
        assert admin_get(str(admin), "/ready").strip() == b"LIVE"

        hostile_suffixes = ("/quitquitquit#", "/quitquitquit?", "/quitquitquit%3F", "/logging#")
        # Every listening port, and Envoy's usual admin port in case something is there.
        targets = sorted(ports | {9901})
        async with contextlib.AsyncExitStack() as held:
            for index, port in enumerate(targets):
                first = register_request(f"probe-{index}", endpoint=f"http://127.0.0.1:{port}")
                stream = await held.enter_async_context(register_client(gateway.url, first))
                if port == gateway.port:
                    await stream.wait_done()  # the gateway's own address is never an endpoint
                    assert isinstance(stream.error, ConnectError)
                    assert stream.error.code == Code.PERMISSION_DENIED
                else:
                    await stream.wait_for("registered")  # held open, so the gateway dials it
                for suffix in hostile_suffixes:
                    endpoint = f"http://127.0.0.1:{port}{suffix}"
                    first = register_request(f"hostile-{index}", endpoint=endpoint)
                    async with register_client(gateway.url, first) as refused:
                        await refused.wait_done()
                    assert isinstance(refused.error, ConnectError), endpoint
                    assert refused.error.code == Code.INVALID_ARGUMENT, endpoint
            # The gateway dials every registered endpoint for this fan-out.
            listed = {s["subsystem"]["id"] for s in list_subsystems(gateway.url)}
            assert f"probe-{targets.index(metrics_port)}" in listed
        assert ready(gateway), gateway.logs()
        assert gateway.proc.poll() is None


async def test_an_endpoint_with_a_fragment_or_credentials_is_refused_on_the_stream() -> None:
    with start_gateway() as gateway:
        first = register_request("hostile", endpoint="http://127.0.0.1:9/admin/delete?confirm=1")
        async with register_client(gateway.url, first) as stream:
            await stream.wait_done()
        assert isinstance(stream.error, ConnectError)
        assert stream.error.code == Code.INVALID_ARGUMENT
        assert "it has a query ('?...')" in stream.error.message
        assert "optional path prefix" in stream.error.message

        first = register_request("leaky", endpoint="http://ops:s3cret@127.0.0.1:9/flowwatch/")
        async with register_client(gateway.url, first) as stream:
            await stream.wait_done()
        assert isinstance(stream.error, ConnectError)
        assert "it carries credentials" in stream.error.message
        assert "s3cret" not in stream.error.message

        # A path prefix is still an endpoint.
        first = register_request("prefixed", endpoint="http://127.0.0.1:9/flowwatch/")
        async with register_client(gateway.url, first) as stream:
            await stream.wait_for("registered")
            assert stream.received[0].registered.accepted
        assert "hostile" not in subsystem_states(gateway.url)
        assert "s3cret" not in gateway.logs()


# --- slow, idle and too many clients --------------------------------------------------------


class RawConnection:
    """A TCP connection the test drives byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed_by_server = False

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.writer.write(data)
            await self.writer.drain()

    async def poll_closed(self) -> bool:
        """True once the server has closed (EOF or reset); reads whatever it said first."""
        if not self.closed_by_server:
            try:
                while data := await asyncio.wait_for(self.reader.read(65536), 0.01):
                    del data
                self.closed_by_server = True
            except TimeoutError:
                pass
            except OSError:
                self.closed_by_server = True
        return self.closed_by_server

    async def request(self, path: str) -> bytes:
        """One keep-alive HTTP/1.1 GET; the status line of the answer."""
        await self.send(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        status = await asyncio.wait_for(self.reader.readline(), DEADLINE_S)
        headers = b""
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            headers += line.lower()
        length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
        await self.reader.readexactly(length)
        return status.strip()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def raw_connections(port: int, count: int) -> AsyncIterator[list[RawConnection]]:
    connections = [await RawConnection.open(port) for _ in range(count)]
    try:
        yield connections
    finally:
        for connection in connections:
            connection.close()


async def all_closed(connections: list[RawConnection]) -> bool:
    return all([await c.poll_closed() for c in connections])


async def test_slow_clients_are_closed_while_requests_and_a_quiet_register_stream_go_on() -> None:
    args = ("--request-header-timeout", "2s", "--idle-timeout", "2s", "--max-connections", "50")
    # Pings further apart than the idle timeout: only the open stream keeps it alive.
    with start_gateway(*args, "--heartbeat", "3s") as gateway:
        async with register_client(gateway.url, register_request("quiet")) as register:
            await register.wait_for("registered")
            async with (
                raw_connections(gateway.port, 30) as slow,
                raw_connections(gateway.port, 5) as silent,
            ):
                for connection in slow:
                    await connection.send(b"POST /flowwatch.v1.RunService/ListRuns HTTP/1.1\r\n")

                async def trickle_until_closed() -> bool:
                    for connection in slow:
                        if not await connection.poll_closed():
                            await connection.send(b"X")
                    return await all_closed(slow)

                # Served while the slow ones hold their connections.
                async with httpx.AsyncClient() as client:
                    assert (await client.get(f"{gateway.url}/readyz")).status_code == 200
                await eventually(trickle_until_closed, "slow clients closed (header timeout)")
                await eventually(lambda: all_closed(silent), "silent clients closed (idle)")

            # The Register stream outlived both timeouts, with only pings as traffic.
            await register.wait_for("ping", count=3, within=DEADLINE_S)
            assert not register.done.is_set(), register.error
            assert subsystem_states(gateway.url)["quiet"] == "connected"
        assert ready(gateway), gateway.logs()


async def test_connections_above_the_cap_are_refused_and_held_ones_served() -> None:
    cap = 20
    with start_gateway("--max-connections", str(cap)) as gateway:
        kept = await RawConnection.open(gateway.port)
        try:
            assert await kept.request("/healthz") == b"HTTP/1.1 200 OK"
            async with raw_connections(gateway.port, cap + 10) as crowd:

                async def enough_refused() -> bool:
                    closed = [await c.poll_closed() for c in crowd]
                    # Held connection + crowd exceed the cap by one more; one spare for counting.
                    return sum(closed) >= len(crowd) - cap

                await eventually(enough_refused, "connections above the cap closed")
                assert await kept.request("/healthz") == b"HTTP/1.1 200 OK"
        finally:
            kept.close()

        async def new_connection_served() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{gateway.url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(new_connection_served, "room again once the crowd left")


async def test_uvicorn_caps_connections_and_closes_idle_keep_alive_ones() -> None:
    args = ("--max-connections", "5", "--idle-timeout", "1s")
    with start_gateway(*args, server="uvicorn") as gateway:
        kept = await RawConnection.open(gateway.port)
        try:
            assert await kept.request("/healthz") == b"HTTP/1.1 200 OK"
            await eventually(kept.poll_closed, "idle keep-alive connection closed")
        finally:
            kept.close()
        async with raw_connections(gateway.port, 5):

            async def over_the_cap_answered_503() -> bool:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{gateway.url}/healthz")).status_code == 503

            await eventually(over_the_cap_answered_503, "503 above the cap")
