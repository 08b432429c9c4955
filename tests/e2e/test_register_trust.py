"""The trust boundary against a real gateway: every refusal over Connect, gRPC and raw h2.

One gateway with a shared key, a per-subsystem keys file, an endpoint deny list and
read-only mode; each refusal must carry the code and a message a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway.gen.flowwatch.v1 import (
    gateway_service_connect,
    gateway_service_pb2,
    types_pb2,
)
from tests.support.harness import (
    ROOT,
    TEST_API_KEY,
    GatewayProcess,
    http2_client,
    register_client,
    register_request,
    start_gateway,
    subsystem_states,
)

pytestmark = pytest.mark.anyio
REGISTER = "/flowwatch.v1.GatewayService/Register"
KEYED_SECRET = "keyed-secret-5678"
Message = gateway_service_pb2.SubsystemMessage


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"# per-subsystem keys\nkeyed-*  {KEYED_SECRET}\n")
    with start_gateway(
        "--heartbeat",
        "200ms",
        "--grace-period",
        "1s",
        "--api-key",
        TEST_API_KEY,
        "--api-keys-file",
        str(keys),
        "--endpoint-deny",
        "10.66.0.0/16",
        "--read-only",
        "true",
    ) as gw:
        yield gw


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- three ways to send a Register stream; each returns (code, message) ---------------
Outcome = tuple[Code | None, str]


async def via_connect(gw: GatewayProcess, messages: list[Message]) -> Outcome:
    """Connect, binary, uncompressed: the stream the gateway frames itself."""
    return await _connect_register(gw, messages, gzip_requests=False)


async def via_connect_gzip(gw: GatewayProcess, messages: list[Message]) -> Outcome:
    """Connect with gzip-compressed requests: the stream connectrpc's server frames."""
    return await _connect_register(gw, messages, gzip_requests=True)


async def _connect_register(
    gw: GatewayProcess, messages: list[Message], *, gzip_requests: bool
) -> Outcome:
    async def requests() -> AsyncIterator[Message]:
        for message in messages:
            yield message

    client = gateway_service_connect.GatewayServiceClient(
        gw.url,
        http_client=http2_client(),
        protocol=ProtocolType.CONNECT,
        send_compression=GzipCompression() if gzip_requests else None,
    )
    try:
        async for _ in client.register(requests()):
            pass
    except ConnectError as exc:
        return exc.code, exc.message
    return None, ""


async def via_grpcio(gw: GatewayProcess, messages: list[Message]) -> Outcome:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
        call = channel.stream_stream(
            REGISTER,
            request_serializer=Message.SerializeToString,
            response_deserializer=gateway_service_pb2.GatewayMessage.FromString,
        )(iter(messages))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return Code[exc.code().name], exc.details() or ""
    return None, ""


def _h2_register(port: int, messages: list[Message]) -> Outcome:
    """gRPC over raw HTTP/2 frames (h2c prior knowledge), as a foreign client would."""
    body = b"".join(
        b"\x00" + len(data).to_bytes(4, "big") + data
        for data in (m.SerializeToString() for m in messages)
    )
    status: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{port}"),
                (":path", REGISTER),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        sock.sendall(conn.data_to_send())
        ended = False

        def pump() -> None:
            nonlocal ended
            data = sock.recv(65536)
            if not data:
                ended = True
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for key, value in event.headers:
                        name = key.decode() if isinstance(key, bytes) else key
                        text = value.decode() if isinstance(value, bytes) else value
                        status[name] = text
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())

        sent = 0
        while sent < len(body) and not ended:  # respect flow control for large messages
            window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if window == 0:
                pump()
                continue
            chunk = body[sent : sent + window]
            conn.send_data(stream, chunk)
            sent += len(chunk)
            sock.sendall(conn.data_to_send())
        if not ended:
            conn.end_stream(stream)
            sock.sendall(conn.data_to_send())
        while not ended:
            pump()
    if status.get("grpc-status", "0") == "0":
        return None, ""
    grpc_codes = list(Code)  # gRPC numbers statuses 1..16 in this order
    return grpc_codes[int(status["grpc-status"]) - 1], unquote(status.get("grpc-message", ""))


async def via_h2(gw: GatewayProcess, messages: list[Message]) -> Outcome:
    return await asyncio.to_thread(_h2_register, gw.port, messages)


Transport = Callable[[GatewayProcess, list[Message]], Coroutine[Any, Any, Outcome]]
TRANSPORTS = pytest.mark.parametrize("send", [via_connect, via_connect_gzip, via_grpcio, via_h2])


def many_workflows(count: int, padding: int = 0) -> list[types_pb2.WorkflowDefinition]:
    return [
        types_pb2.WorkflowDefinition(id=f"workflow-{i:05d}", name="w" + "n" * padding)
        for i in range(count)
    ]


REFUSALS: list[tuple[str, Callable[[str, int], list[Message]], Code, str]] = [
    (
        "metadata endpoint",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, endpoint="http://169.254.169.254/")
        ],
        Code.PERMISSION_DENIED,
        "is refused: 169.254.169.254 is link-local",
    ),
    (
        "mapped metadata endpoint",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, endpoint="http://[::ffff:169.254.169.254]/")
        ],
        Code.PERMISSION_DENIED,
        "(169.254.169.254) is link-local",
    ),
    (
        "metadata host name",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, endpoint="http://metadata.google.internal/")
        ],
        Code.PERMISSION_DENIED,
        "cloud metadata host name",
    ),
    (
        "operator deny list",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, endpoint="http://10.66.1.2:8080")
        ],
        Code.PERMISSION_DENIED,
        "GATEWAY_ENDPOINT_DENY entry 10.66.0.0/16",
    ),
    (
        "the gateway itself",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, endpoint=f"http://127.0.0.1:{port}")
        ],
        Code.PERMISSION_DENIED,
        "the gateway's own listen address",
    ),
    (
        "id unsafe in headers",
        lambda sid, port: [register_request(f"{sid},other", api_key=TEST_API_KEY)],
        Code.INVALID_ARGUMENT,
        "RegisterRequest.subsystem_id",
    ),
    (
        "too many workflows",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, workflows=many_workflows(1001))
        ],
        Code.INVALID_ARGUMENT,
        "RegisterRequest.workflows has 1001 entries; at most 1000",
    ),
    (
        "message too large",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY, workflows=many_workflows(1500, 1000))
        ],
        Code.RESOURCE_EXHAUSTED,
        "larger than configured max",
    ),
    (
        "shared key for an id with its own key",
        lambda sid, port: [register_request(f"keyed-{sid}", api_key=TEST_API_KEY)],
        Code.UNAUTHENTICATED,
        "invalid API key",
    ),
    (
        "second RegisterRequest",
        lambda sid, port: [
            register_request(sid, api_key=TEST_API_KEY),
            register_request(sid, api_key=TEST_API_KEY),
        ],
        Code.FAILED_PRECONDITION,
        "a second RegisterRequest on one Register stream",
    ),
]


@TRANSPORTS
@pytest.mark.parametrize(
    ("messages", "code", "fragment"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
async def test_refusals_carry_code_and_message(
    gateway: GatewayProcess,
    send: Transport,
    messages: Callable[[str, int], list[Message]],
    code: Code,
    fragment: str,
) -> None:
    sid = unique_id("refused")
    got_code, got_message = await send(gateway, messages(sid, gateway.port))
    assert (got_code, fragment in got_message) == (code, True), got_message
    if code != Code.FAILED_PRECONDITION:  # the second RegisterRequest came after a good one
        assert not any(sid in known for known in subsystem_states(gateway.url))


@TRANSPORTS
async def test_a_connected_id_is_not_taken_over_by_another_endpoint(
    gateway: GatewayProcess, send: Transport
) -> None:
    sid = unique_id("held")
    holder = register_request(sid, api_key=TEST_API_KEY, endpoint="http://127.0.0.1:9/holder")
    async with register_client(gateway.url, holder) as stream:
        await stream.wait_for("ping")
        claim = register_request(sid, api_key=TEST_API_KEY, endpoint="http://127.0.0.1:9/other")
        code, message = await send(gateway, [claim])
        assert code == Code.ALREADY_EXISTS
        assert "held by a connected subsystem at http://127.0.0.1:9/holder" in message
        assert subsystem_states(gateway.url)[sid] == "connected"
        assert stream.kinds().count("disconnect") == 0


async def test_a_per_subsystem_key_registers_its_ids(gateway: GatewayProcess) -> None:
    sid = unique_id("keyed")
    async with register_client(gateway.url, register_request(sid, api_key=KEYED_SECRET)) as s:
        await s.wait_for("ping")
        assert subsystem_states(gateway.url)[sid] == "connected"
    code, _ = await via_connect(
        gateway, [register_request(unique_id("plain"), api_key=KEYED_SECRET)]
    )
    assert code == Code.UNAUTHENTICATED  # that key is only for keyed-* ids


# --- HTTP/1.1 ----------------------------------------------------------------------------


def _h1_post(gw: GatewayProcess, content_type: str, body: bytes) -> httpx.Response:
    return httpx.post(
        gw.url + REGISTER,
        content=body,
        headers={"content-type": content_type, "connect-protocol-version": "1"},
        timeout=5,
    )


def _envelope(message: Message) -> bytes:
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def test_register_over_http1_is_refused_before_anything_is_registered(
    gateway: GatewayProcess,
) -> None:
    sid = unique_id("h1")
    first = register_request(sid, api_key=TEST_API_KEY)

    unary = _h1_post(gateway, "application/json", b"{}")
    assert unary.status_code == 400
    assert unary.json()["code"] == "failed_precondition"
    assert "needs HTTP/2" in unary.json()["message"] and "h2c" in unary.json()["message"]

    stream = _h1_post(gateway, "application/connect+proto", _envelope(first))
    assert stream.status_code == 200
    assert stream.content[0] == 0x02  # Connect end-of-stream message
    end = json.loads(stream.content[5:])
    assert end["error"]["code"] == "failed_precondition"
    assert "ALPN h2" in end["error"]["message"]

    grpc_h1 = _h1_post(gateway, "application/grpc", _envelope(first))
    assert grpc_h1.headers["grpc-status"] == "9"
    assert "HTTP/2" in unquote(grpc_h1.headers["grpc-message"])
    assert sid not in subsystem_states(gateway.url)
    assert f"id={sid}" not in gateway.logs()


# --- read-only ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpc", "body"),
    [
        ("RunService/RetryRun", {"runId": "r1"}),
        ("RunService/CancelRun", {"runId": "r1"}),
        ("RunService/BulkRetry", {"runIds": ["r1"]}),
        ("SearchService/Reindex", {}),
    ],
)
def test_read_only_refuses_actions_but_not_reads(
    gateway: GatewayProcess, rpc: str, body: dict[str, object]
) -> None:
    response = httpx.post(
        f"{gateway.url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1"},
        timeout=5,
    )
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert "GATEWAY_READ_ONLY" in response.json()["message"]
    listing = httpx.post(
        f"{gateway.url}/flowwatch.v1.WorkflowService/ListSubsystems",
        json={},
        headers={"Connect-Protocol-Version": "1"},
        timeout=5,
    )
    assert listing.status_code == 200


async def test_read_only_over_grpc(gateway: GatewayProcess) -> None:
    from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        retry = channel.unary_unary(
            "/flowwatch.v1.RunService/RetryRun",
            request_serializer=run_service_pb2.RetryRunRequest.SerializeToString,
            response_deserializer=run_service_pb2.RetryRunResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await retry(run_service_pb2.RetryRunRequest(run_id="r1"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "read-only" in (info.value.details() or "")


# --- two processes, one id ---------------------------------------------------------------

CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from flowwatch_gateway import Backoff, connect_to_gateway
    from flowwatch_gateway.gen.flowwatch.v1 import types_pb2

    gateway, sid, endpoint, key = sys.argv[1:5]
    asyncio.run(connect_to_gateway(
        gateway_url=gateway, subsystem_id=sid, local_endpoint=endpoint, api_key=key,
        workflows=[], capabilities=types_pb2.Capabilities(), metadata={},
        backoff=Backoff(initial=0.2, maximum=2.0),
    ))
    """
)


@pytest.fixture
def own_gateway() -> Iterator[GatewayProcess]:
    """A gateway whose refusal-log budget (5 lines a minute per peer) no other test spent."""
    with start_gateway("--heartbeat", "200ms", "--api-key", TEST_API_KEY) as gw:
        yield gw


def test_two_processes_with_one_id_do_not_flap(own_gateway: GatewayProcess) -> None:
    gateway = own_gateway
    sid = unique_id("pair")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, gateway.url, sid, endpoint, TEST_API_KEY],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for endpoint in ("http://127.0.0.1:9/first", "http://127.0.0.1:9/second")
    ]
    try:
        deadline = time.monotonic() + 20
        while sid not in subsystem_states(gateway.url):
            assert time.monotonic() < deadline, gateway.logs()
            time.sleep(0.1)
        # Several of the refused client's retry periods (2 s at most with this backoff).
        time.sleep(6)
        assert subsystem_states(gateway.url)[sid] == "connected"
    finally:
        outputs = []
        for proc in procs:
            proc.kill()
            outputs.append(proc.communicate(timeout=10)[1])
    logs = gateway.logs()
    registrations = logs.count(f"subsystem registered: id={sid} ")
    refusals = [line for line in logs.splitlines() if f"id={sid} " in line and "held by" in line]
    assert registrations == 1, logs
    assert len(refusals) == 1, refusals  # logged once for the pair, not per attempt
    refused_output = next(out for out in outputs if "held by a connected subsystem" in out)
    assert "rejected" in refused_output


def test_open_registration_warns_at_start_up() -> None:
    with start_gateway() as open_gateway:
        assert "REGISTRATION IS OPEN TO ANYONE" in open_gateway.logs()
