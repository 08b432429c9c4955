"""Register over real HTTP/2 against a real pyvoy gateway: Connect, gRPC and grpcio clients.

Registry state is observed through ListSubsystems (gateway.state metadata), the way a
foreign client such as the UI sees it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.serving.app import register_service_for
from tests.support.harness import (
    ROOT,
    TEST_API_KEY,
    GatewayProcess,
    await_state,
    list_subsystems,
    pong,
    register_client,
    register_request,
    start_gateway,
    subsystem_states,
    wait_for_state,
)

pytestmark = pytest.mark.anyio
# The minimal subsystem of tests/support/harness.py, run as a module from the repo root.
HARNESS = [sys.executable, "-m", "tests.support.harness"]
HEARTBEAT = 0.2
GRACE = 1.0


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("protocol", [ProtocolType.CONNECT, ProtocolType.GRPC])
async def test_register_is_accepted_and_pings_are_answered(
    fast_gateway: GatewayProcess, protocol: ProtocolType
) -> None:
    sid = unique_id("accept")
    first = register_request(
        sid,
        api_key=TEST_API_KEY,
        name="Orders",
        description="order pipeline",
        metadata={"team": "payments"},
        workflows=[types_pb2.WorkflowDefinition(id="checkout", name="Checkout")],
    )
    async with register_client(fast_gateway.url, first, protocol=protocol) as stream:
        await stream.wait_for("registered")
        registered = stream.received[0].registered
        assert registered.accepted
        assert registered.heartbeat_interval.ToMilliseconds() == 200
        # Several intervals, each ping answered by a pong: the stream stays connected.
        await stream.wait_for("ping", count=5, within=5)
        assert stream.received[1].ping.HasField("timestamp")
        assert subsystem_states(fast_gateway.url)[sid] == "connected"
        (summary,) = [s for s in list_subsystems(fast_gateway.url) if s["subsystem"]["id"] == sid]
        metadata = summary["subsystem"]["metadata"]
        assert summary["subsystem"]["name"] == "Orders"
        assert summary["workflowCount"] == 1
        assert metadata["team"] == "payments"
        assert metadata["gateway.endpoint"] == "http://127.0.0.1:9/flowwatch"
        assert metadata["gateway.last_heartbeat"].endswith("Z")
        assert metadata["gateway.registration"].startswith(f"{sid}#")
    # Closing the stream makes the subsystem stale at once (no need to wait for heartbeats).
    await await_state(fast_gateway.url, sid, "stale", within=2 * HEARTBEAT + 1)


async def test_register_with_grpcio_client(fast_gateway: GatewayProcess) -> None:
    sid = unique_id("grpcio")
    outgoing: asyncio.Queue[gateway_service_pb2.SubsystemMessage | None] = asyncio.Queue()
    await outgoing.put(register_request(sid, api_key=TEST_API_KEY))

    async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
        while (message := await outgoing.get()) is not None:
            yield message

    async with grpc.aio.insecure_channel(f"127.0.0.1:{fast_gateway.port}") as channel:
        register = channel.stream_stream(
            "/flowwatch.v1.GatewayService/Register",
            request_serializer=gateway_service_pb2.SubsystemMessage.SerializeToString,
            response_deserializer=gateway_service_pb2.GatewayMessage.FromString,
        )
        call = register(requests())
        kinds = []
        async for message in call:
            kinds.append(message.WhichOneof("msg"))
            if kinds[-1] == "ping":
                await outgoing.put(pong())
            if kinds.count("ping") == 3:
                assert subsystem_states(fast_gateway.url)[sid] == "connected"
                break
        assert kinds == ["registered", "ping", "ping", "ping"]
        call.cancel()
        await outgoing.put(None)
    await await_state(fast_gateway.url, sid, "stale", within=2)


async def test_wrong_api_key_is_rejected(fast_gateway: GatewayProcess) -> None:
    sid = unique_id("badkey")
    first = register_request(sid, api_key="not-the-key")
    async with register_client(fast_gateway.url, first) as stream:
        await stream.wait_done()
    assert stream.kinds() == ["registered"]
    assert not stream.received[0].registered.accepted
    assert stream.received[0].registered.reject_reason == "invalid API key"
    assert isinstance(stream.error, ConnectError)
    assert stream.error.code == Code.UNAUTHENTICATED
    assert sid not in subsystem_states(fast_gateway.url)
    assert "not-the-key" not in fast_gateway.logs()
    assert TEST_API_KEY not in fast_gateway.logs()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (
            pong(),
            "expected a RegisterRequest as the first message on the Register stream, got pong",
        ),
        (
            register_request("", api_key=TEST_API_KEY),
            "RegisterRequest.subsystem_id is required",
        ),
        (
            register_request("bad-endpoint", api_key=TEST_API_KEY, endpoint="orders:8080"),
            "RegisterRequest.flowwatch_endpoint 'orders:8080' is refused: it is not an absolute "
            "http(s) URL",
        ),
        (
            register_request("bad-endpoint", api_key=TEST_API_KEY, endpoint="http:///no-host"),
            "'http:///no-host'",
        ),
        (
            register_request("bad-endpoint", api_key=TEST_API_KEY, endpoint="ftp://files:21"),
            "'ftp://files:21' is refused: it is not an absolute http(s) URL",
        ),
    ],
)
async def test_invalid_first_message_is_invalid_argument(
    fast_gateway: GatewayProcess, first: gateway_service_pb2.SubsystemMessage, expected: str
) -> None:
    async with register_client(fast_gateway.url, first) as stream:
        await stream.wait_done()
    assert stream.kinds() == []
    assert isinstance(stream.error, ConnectError), stream.error
    assert stream.error.code == Code.INVALID_ARGUMENT
    assert expected in stream.error.message
    assert "bad-endpoint" not in subsystem_states(fast_gateway.url)


async def test_stale_then_removed_after_grace_and_restored_by_reconnect(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("grace")
    async with register_client(url, register_request(sid, api_key=TEST_API_KEY)) as stream:
        await stream.wait_for("ping")
    await await_state(url, sid, "stale", within=2)

    # A reconnect within the grace period restores the subsystem.
    async with register_client(url, register_request(sid, api_key=TEST_API_KEY)) as stream:
        await stream.wait_for("ping", count=2)
        assert subsystem_states(url)[sid] == "connected"
    await await_state(url, sid, "stale", within=2)
    to_removed = await await_state(url, sid, None, within=GRACE + 3)
    print(f"stale -> removed after {to_removed:.2f}s (grace {GRACE}s)")
    assert to_removed >= GRACE * 0.5


async def test_reregistration_replaces_old_stream_and_survives_its_end(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("race")
    first = register_request(sid, api_key=TEST_API_KEY)
    async with register_client(url, first) as old:
        await old.wait_for("ping")
        old_instance = list_subsystems(url)
        async with register_client(url, first) as new:
            await new.wait_for("registered")
            # The old stream is told why and ended by the gateway.
            await old.wait_for("disconnect")
            await old.wait_done()
            assert old.received[-1].disconnect.reason.startswith("replaced by a newer")
            # Its end must not make the new registration stale, now or later.
            await new.wait_for("ping", count=5, within=5)
            assert subsystem_states(url)[sid] == "connected"
            instances = {
                s["subsystem"]["id"]: s["subsystem"]["metadata"]["gateway.registration"]
                for s in list_subsystems(url)
            }
            assert instances[sid] not in [
                s["subsystem"]["metadata"]["gateway.registration"] for s in old_instance
            ]


async def test_pongs_keep_a_quiet_subsystem_connected_and_silence_makes_it_stale(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    sid = unique_id("silent")
    async with register_client(
        url, register_request(sid, api_key=TEST_API_KEY), auto_pong=False
    ) as stream:
        await stream.wait_for("registered")
        started = time.monotonic()
        await await_state(url, sid, "stale", within=5)
        print(f"no pongs -> stale after {time.monotonic() - started:.2f}s")
        # A pong on the same stream brings it back.
        await stream.send(pong())
        await await_state(url, sid, "connected", within=2)


def _spawn_subsystem(gateway: GatewayProcess, sid: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *HARNESS,
            "subsystem",
            "--gateway",
            gateway.url,
            "--id",
            sid,
            "--api-key",
            TEST_API_KEY,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("REGISTERED accepted=True"), line
    return proc


@pytest.fixture
def subsystem_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(5)


def test_killed_subsystem_goes_stale_at_once_and_is_removed_after_grace(
    fast_gateway: GatewayProcess, subsystem_procs: list[subprocess.Popen[str]]
) -> None:
    url = fast_gateway.url
    sid = unique_id("killed")
    proc = _spawn_subsystem(fast_gateway, sid)
    subsystem_procs.append(proc)
    wait_for_state(url, sid, "connected", timeout=5)
    proc.kill()
    to_stale = wait_for_state(url, sid, "stale", timeout=5)
    to_removed = wait_for_state(url, sid, None, timeout=GRACE + 5)
    print(f"SIGKILL -> stale {to_stale:.2f}s, then removed {to_removed:.2f}s later")
    # A closed TCP connection ends the stream: no need to miss 2 heartbeats (0.4 s).
    assert to_stale < 2 * HEARTBEAT + 1.0
    stale_line = fast_gateway.logs().split(f"subsystem stale: id={sid} ")[1].splitlines()[0]
    assert "reason=register stream ended" in stale_line


def test_hung_subsystem_goes_stale_by_missed_heartbeats(
    fast_gateway: GatewayProcess, subsystem_procs: list[subprocess.Popen[str]]
) -> None:
    url = fast_gateway.url
    sid = unique_id("hung")
    proc = _spawn_subsystem(fast_gateway, sid)
    subsystem_procs.append(proc)
    wait_for_state(url, sid, "connected", timeout=5)
    proc.send_signal(signal.SIGSTOP)
    to_stale = wait_for_state(url, sid, "stale", timeout=5)
    to_removed = wait_for_state(url, sid, None, timeout=GRACE + 5)
    print(f"SIGSTOP -> stale {to_stale:.2f}s, then removed {to_removed:.2f}s later")
    # The connection is still open: only the missed pongs can have made it stale.
    assert f"subsystem stale: id={sid} " in fast_gateway.logs()
    stale_line = fast_gateway.logs().split(f"subsystem stale: id={sid} ")[1].splitlines()[0]
    assert "reason=no pong for 0.4s" in stale_line
    # Once resumed, the subsystem learns that its registration is gone.
    proc.send_signal(signal.SIGCONT)
    output, _ = proc.communicate(timeout=10)
    assert "DISCONNECT registration expired" in output


def test_sigterm_disconnects_subsystems_and_exits_zero() -> None:
    with start_gateway("--heartbeat", "200ms") as gateway:
        sid = unique_id("shutdown")
        proc = subprocess.Popen(
            [*HARNESS, "subsystem", "--gateway", gateway.url, "--id", sid],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("REGISTERED accepted=True")
            wait_for_state(gateway.url, sid, "connected", timeout=5)
            started = time.monotonic()
            status = gateway.stop(signal.SIGTERM, timeout=15)
            print(f"SIGTERM -> exit {status} after {time.monotonic() - started:.2f}s")
            output, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "DISCONNECT gateway shutting down" in output, output + gateway.logs()
        assert status == 0, gateway.logs()
        assert proc.returncode == 0


async def test_a_draining_gateway_refuses_new_registrations() -> None:
    """In-process: once draining, a subsystem told to leave cannot rejoin this instance."""
    registry = InMemoryRegistry()
    service = register_service_for(GatewayConfig(), registry)
    service.start_draining()

    async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
        yield register_request("late")

    with pytest.raises(ConnectError) as info:
        async for _ in service.register(requests(), cast(Any, None)):
            pass
    assert info.value.code == Code.UNAVAILABLE
    assert registry.get("late") is None
