"""What a dishonest client can do to the gateway's log: not forge it, not flood it.

Real gateway processes with GATEWAY_LOG_FORMAT=text and an API key; clients are
connectrpc, grpcio and raw HTTP/2 frames (h2), since a hostile peer need not use
any client library.
"""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Callable, Iterator

import grpc
import h2.config
import h2.connection
import httpx
import pytest

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2
from flowwatch_gateway.registry.register import REJECTION_LINES_PER_PEER
from tests.support.harness import (
    TEST_API_KEY,
    GatewayProcess,
    register_client,
    register_request,
    start_gateway,
)

pytestmark = pytest.mark.anyio
REGISTER = "/flowwatch.v1.GatewayService/Register"
FORGED = "FAKE LOG LINE level=ERROR"


@pytest.fixture
def gateway() -> Iterator[GatewayProcess]:
    """Its own gateway per test: each test counts what the refusal budget let through."""
    with start_gateway(
        "--heartbeat",
        "200ms",
        "--grace-period",
        "1s",
        "--api-key",
        TEST_API_KEY,
        env={"GATEWAY_LOG_FORMAT": "text"},
    ) as gw:
        yield gw


def wait_until(check: Callable[[], bool], gw: GatewayProcess, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, gw.logs()
        time.sleep(0.05)


def registrations(gw: GatewayProcess, result: str) -> int:
    text = httpx.get(f"{gw.url}/metrics", timeout=5.0).text
    pattern = rf'^flowwatch_gateway_registrations_total\{{result="{result}"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return int(float(match.group(1))) if match else 0


def stopped_logs(gw: GatewayProcess) -> list[str]:
    """Every line the gateway wrote, once it has stopped (nothing can come later)."""
    assert gw.stop() == 0, gw.logs()
    return gw.logs().splitlines()


async def test_a_name_or_endpoint_cannot_forge_a_log_line(gateway: GatewayProcess) -> None:
    name = f"x\n{FORGED}"
    endpoint = f"http://127.0.0.1:9/fw\r\n{FORGED}"
    accepted = register_request("forger", api_key=TEST_API_KEY, name=name)
    async with register_client(gateway.url, accepted) as stream:
        await stream.wait_for("registered")
        assert stream.received[0].registered.accepted
    # An endpoint with control characters is refused at registration; its refusal is
    # logged, escaped.
    bad_endpoint = register_request("forger-3", api_key=TEST_API_KEY, endpoint=endpoint)
    async with register_client(gateway.url, bad_endpoint) as stream:
        await stream.wait_done()
    refused = register_request("forger-2", api_key="wrong", name=name, endpoint=endpoint)
    async with register_client(gateway.url, refused) as stream:
        await stream.wait_done()
    wait_until(lambda: "subsystem stale: id=forger " in gateway.logs(), gateway)
    lines = stopped_logs(gateway)
    assert not [line for line in lines if line.startswith(FORGED)]
    registered = [line for line in lines if "subsystem registered: id=forger " in line]
    assert len(registered) == 1
    assert f"name=x\\n{FORGED}" in registered[0]
    rejected = [line for line in lines if "subsystem rejected: id=forger-2 " in line]
    assert len(rejected) == 1 and f"name=x\\n{FORGED}" in rejected[0]
    bad = [line for line in lines if "subsystem rejected: id=forger-3 " in line]
    assert len(bad) == 1 and f"/fw\\r\\n{FORGED}" in bad[0]


async def test_wrong_keys_under_ever_new_ids_from_one_peer_give_a_few_lines_and_a_summary(
    gateway: GatewayProcess,
) -> None:
    attempts = 200
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        register = channel.stream_stream(
            REGISTER,
            request_serializer=gateway_service_pb2.SubsystemMessage.SerializeToString,
            response_deserializer=gateway_service_pb2.GatewayMessage.FromString,
        )
        for index in range(attempts):
            call = register(iter([register_request(f"guess-{index}", api_key=f"key-{index}")]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert registrations(gateway, "invalid_api_key") == attempts
    lines = stopped_logs(gateway)  # the drain writes the summary of the window so far
    rejected = [line for line in lines if "subsystem rejected:" in line]
    notices = [line for line in lines if "registration refusals: more than" in line]
    summaries = [
        line for line in lines if "registration refusals:" in line and "not logged in" in line
    ]
    # 5 refusals in full, one line saying the rest are counted, one summary of them.
    assert len(rejected) == REJECTION_LINES_PER_PEER, rejected
    assert len(notices) == 1 and len(summaries) == 1, lines
    held_back = attempts - REJECTION_LINES_PER_PEER
    assert f": {held_back} not logged" in summaries[0]
    assert summaries[0].endswith(f"most from 127.0.0.1 ({held_back})")


# --- streams opened and abandoned, or fed garbage, over raw HTTP/2 -----------------------

# Framed by the gateway itself (Connect and gRPC, binary) and by connectrpc's server
# (gzip-compressed requests, gRPC-Web, a deadline).
HEADERS = [
    [("content-type", "application/grpc")],
    [("content-type", "application/connect+proto")],
    [("content-type", "application/connect+proto"), ("connect-content-encoding", "gzip")],
    [("content-type", "application/grpc-web+proto")],
    [("content-type", "application/grpc"), ("grpc-timeout", "3S")],
]
# What the client sends after the headers and does next; whether only the gateway's
# first-message timeout can end it.
GARBAGE = b"\xff" * 5
BEHAVIOURS: list[tuple[str, bytes, str, bool]] = [
    ("silent", b"", "wait", True),  # opens, never sends a RegisterRequest
    ("half an envelope", b"\x00\x00\x00", "wait", True),
    ("garbage message", b"\x00" + len(GARBAGE).to_bytes(4, "big") + GARBAGE, "wait", False),
    ("compressed flag, nothing compressed", b"\x01\x00\x00\x00\x01\x00", "wait", False),
    ("declares 2 GiB", b"\x00\x7f\xff\xff\xff", "wait", False),
    ("ends early", b"\x00\x00\x00", "end", False),
    ("resets", b"", "reset", False),
]


def streams(count: int) -> Iterator[tuple[list[tuple[str, str]], bytes, str, bool]]:
    """Every combination of HEADERS and BEHAVIOURS, round robin, `count` in all."""
    for index in range(count):
        headers = HEADERS[index % len(HEADERS)]
        _, body, then, times_out = BEHAVIOURS[(index // len(HEADERS)) % len(BEHAVIOURS)]
        has_deadline = any(name == "grpc-timeout" for name, _ in headers)
        yield headers, body, then, times_out and not has_deadline


def open_streams(port: int, connections: int, per_connection: int) -> list[socket.socket]:
    sockets = []
    plan = streams(connections * per_connection)
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for headers, body, then, _ in itertools.islice(plan, per_connection):
            stream = conn.get_next_available_stream_id()
            request_headers = [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", REGISTER),
                ("te", "trailers"),
                *headers,
            ]
            conn.send_headers(stream, request_headers, end_stream=then == "end" and not body)
            if body:
                conn.send_data(stream, body, end_stream=then == "end")
            if then == "reset":
                conn.reset_stream(stream)
        sock.sendall(conn.data_to_send())
        sockets.append(sock)
    return sockets


async def test_abandoned_and_garbage_register_streams_leave_no_traceback(
    gateway: GatewayProcess,
) -> None:
    connections, per_connection = 30, 10  # a few hundred streams
    sockets = open_streams(gateway.port, connections, per_connection)
    try:
        # Wait for the gateway's own first-message timeout to end the silent ones: that
        # is when it used to cancel a pending server receive.
        timeouts = sum(times_out for *_, times_out in streams(connections * per_connection))
        wait_until(lambda: registrations(gateway, "timeout") >= timeouts, gateway)
    finally:
        for sock in sockets:
            sock.close()
    lines = stopped_logs(gateway)
    text = "\n".join(lines)
    assert "Traceback" not in text and "InvalidStateError" not in text, text
    assert not [line for line in lines if "Exception in" in line], text
    rejected = [line for line in lines if "subsystem rejected:" in line]
    assert len(rejected) <= REJECTION_LINES_PER_PEER, rejected
