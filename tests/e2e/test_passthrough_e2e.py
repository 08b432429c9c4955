"""The passthrough path answers exactly as the decoding path does (GATEWAY_PASSTHROUGH).

Two pyvoy gateways in front of the same subsystems (own processes, time frozen):
`fast` with the passthrough (the default) and `decoding` with --passthrough false.
Both learn every run's owner from ListRuns first, so per-run calls on `fast` take
the passthrough and the same calls on `decoding` take the decoding path. For every
per-run read rpc and both Connect codecs, success and the owner's errors, the two
answers must agree in status, body and the headers a client reads.

The subsystems print three headers of every call the gateway makes: its content
type (every call has one), its user agent (connectrpc's client, the decoding path,
sends one; the passthrough sends none) and the destination header of the Envoy leg
(serving/envoy_leg.py): both paths leave through the Envoy the gateway runs in,
addressed to the subsystem's checked address. So the test also sees which path each
call took, and that a retry's new run id was remembered.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs_pb
from flowwatch_gateway.processes import Child, free_port
from flowwatch_gateway.serving.envoy_leg import DESTINATION_HEADER
from tests.support.harness import (
    ROOT,
    STARTUP_TIMEOUT,
    GatewayProcess,
    start_gateway,
    subsystem_states,
)
from tests.support.quirky_owner import LOGS_ERROR, PAUSE_HANG_S, STEPS_ERROR, TIMELINE_ERROR
from tests.support.upstreams import (
    post,
    start_demo_server,
    start_registrar,
    wait_until,
)

ORIGIN = "http://localhost:5173"
READS = ("GetRun", "GetRunSteps", "GetRunTimeline", "GetRunLogs")
CODECS = ("application/proto", "application/json")
# What a client reads besides the body (date/server come from Envoy itself).
COMPARED_HEADERS = (
    "content-type",
    "content-encoding",
    "vary",
    "access-control-allow-origin",
    "access-control-expose-headers",
)
PROBE_HEADER = "content-type"  # every call has one
CLIENT_HEADER = "user-agent"  # the decoding path's calls only


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Stack:
    fast: GatewayProcess
    decoding: GatewayProcess
    orders: Child
    quirky: Child
    orders_url: str
    orders_run: str
    quirky_run: str


def start_quirky(now: datetime) -> tuple[Child, str]:
    port = free_port()
    proc = Child(
        "quirky owner",
        [
            sys.executable,
            "-m",
            "tests.support.quirky_owner",
            *("--id", "quirky", "--port", str(port), "--seed", "4", "--now", now.isoformat()),
        ],
        cwd=ROOT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    proc.start().wait_http_ok(f"{endpoint}/healthz", STARTUP_TIMEOUT)
    return proc, endpoint


def first_run(url: str, subsystem_id: str) -> str:
    """The newest run of `subsystem_id`, listed through the gateway, whose owner the gateway
    then looks up (a listing alone names no owner)."""
    found: list[str] = []

    def listed() -> bool:
        answer = post(
            url,
            "RunService/ListRuns",
            {"filter": {"subsystemIds": [subsystem_id]}, "pagination": {"limit": 1}},
        ).json()
        found[:] = [run["id"] for run in answer.get("runs", ())]
        return bool(found)

    # Right after registration the gateway may still be settling the HTTP version.
    wait_until(listed, 20, f"a run of {subsystem_id} listed")
    settle_owner(url, found[0])
    return found[0]


def settle_owner(url: str, run_id: str) -> None:
    """One GetRun, which asks every subsystem: from then on the gateway knows the owner."""
    answer = post(url, "RunService/GetRun", {"runId": run_id})
    assert answer.status_code == 200, answer.text


def both_connected(url: str) -> bool:
    return subsystem_states(url) == {"orders": "connected", "quirky": "connected"}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    now = datetime.now(UTC).replace(microsecond=0)
    with contextlib.ExitStack() as closing:
        orders, orders_url = start_demo_server(
            "orders", 1, now, print_header=f"{PROBE_HEADER},{CLIENT_HEADER},{DESTINATION_HEADER}"
        )
        closing.callback(orders.close)
        quirky, quirky_url = start_quirky(now)
        closing.callback(quirky.close)
        fast = closing.enter_context(start_gateway("--upstream-timeout", "2s"))
        decoding = closing.enter_context(
            start_gateway("--upstream-timeout", "2s", "--passthrough", "false")
        )
        for gateway in (fast, decoding):
            for sid, endpoint in (("orders", orders_url), ("quirky", quirky_url)):
                closing.callback(start_registrar(gateway.url, sid, endpoint).close)
        for gateway in (fast, decoding):
            wait_until(partial(both_connected, gateway.url), 20, "connected subsystems")
        runs = {}
        for gateway in (fast, decoding):
            # ListRuns teaches each gateway every listed run's owner.
            for sid in ("orders", "quirky"):
                runs[sid] = first_run(gateway.url, sid)
        yield Stack(fast, decoding, orders, quirky, orders_url, runs["orders"], runs["quirky"])


def call(
    url: str, rpc: str, content_type: str, request: Message, origin: str | None = ORIGIN
) -> Answer:
    """`rpc` as a browser at `origin` calls it (None: as a client that is not a browser)."""
    if content_type == "application/proto":
        body = request.SerializeToString()
    else:
        body = json_format.MessageToJson(request).encode()
    response = httpx.post(
        f"{url}/flowwatch.v1.RunService/{rpc}",
        content=body,
        headers={
            "Content-Type": content_type,
            "Connect-Protocol-Version": "1",
            "Connect-Timeout-Ms": "5000",
            # The body compared as it was encoded; compression is negotiated the same
            # way on both paths (checked below with gzip).
            "Accept-Encoding": "identity",
            **({"Origin": origin} if origin is not None else {}),
        },
        timeout=10,
    )
    headers = {name: response.headers.get(name, "") for name in COMPARED_HEADERS}
    return Answer(response.status_code, headers, response.content)


def request_for(rpc: str, run_id: str) -> Message:
    message_type: type[Message] = getattr(runs_pb, f"{rpc}Request")
    return message_type(run_id=run_id)


def probes(child: Child, rpc: str, header: str = PROBE_HEADER) -> list[str]:
    """Values of `header` the subsystem saw for `rpc`, in order."""
    prefix = f"HEADER /flowwatch.v1.RunService/{rpc} {header} "
    return [line[len(prefix) :] for line in child.logs().splitlines() if line.startswith(prefix)]


def assert_same(fast: Answer, decoding: Answer, what: str, rpc: str = "") -> None:
    """Status, headers and body agree; a body byte for byte up to the order of map entries.

    Protobuf leaves the order of map entries (and Struct fields) on the wire and in JSON
    unspecified: the passthrough keeps the owner's order, the decoding path the order of
    its own re-encoding. Everything else (errors, every field's bytes) must be identical.
    """
    assert fast.status == decoding.status, what
    assert fast.headers == decoding.headers, what
    assert len(fast.body) == len(decoding.body), f"{what}: {fast.body!r} != {decoding.body!r}"
    if fast.body == decoding.body:
        return
    assert fast.status == 200, f"{what}: error bodies differ: {fast.body!r} != {decoding.body!r}"
    if fast.headers["content-type"] == "application/json":
        same = json.loads(fast.body) == json.loads(decoding.body)
    else:
        response_type: type[Message] = getattr(runs_pb, f"{rpc}Response")
        same = response_type.FromString(fast.body).SerializeToString(
            deterministic=True
        ) == response_type.FromString(decoding.body).SerializeToString(deterministic=True)
    assert same, f"{what}: {fast.body!r} != {decoding.body!r}"


@pytest.mark.parametrize("content_type", CODECS)
@pytest.mark.parametrize("rpc", READS)
def test_orders_reads_agree_and_take_the_passthrough(
    stack: Stack, rpc: str, content_type: str
) -> None:
    request = request_for(rpc, stack.orders_run)
    before = len(probes(stack.orders, rpc))
    routed_before = len(probes(stack.orders, rpc, DESTINATION_HEADER))
    clients_before = len(probes(stack.orders, rpc, CLIENT_HEADER))
    fast = call(stack.fast.url, rpc, content_type, request)
    # The passthrough answered: one call, the bytes as they came (no client of its own).
    assert len(probes(stack.orders, rpc)) == before + 1
    assert len(probes(stack.orders, rpc, CLIENT_HEADER)) == clients_before
    decoding = call(stack.decoding.url, rpc, content_type, request)
    # The decoding path answered: one more call, made by connectrpc's client.
    assert len(probes(stack.orders, rpc)) == before + 2
    assert len(probes(stack.orders, rpc, CLIENT_HEADER)) == clients_before + 1
    # Both went through Envoy, to the address the policy checked.
    port = stack.orders_url.rsplit(":", 1)[1]
    routed = probes(stack.orders, rpc, DESTINATION_HEADER)[routed_before:]
    assert routed == [f"127.0.0.1:{port}"] * 2
    assert fast.status == 200, fast.body
    assert_same(fast, decoding, f"{rpc} {content_type}", rpc)


@pytest.mark.parametrize("origin", [ORIGIN, None], ids=["browser", "no-origin"])
@pytest.mark.parametrize("content_type", CODECS)
def test_get_run_names_its_subsystem_on_both_paths(
    stack: Stack, content_type: str, origin: str | None
) -> None:
    request = runs_pb.GetRunRequest(run_id=stack.quirky_run)
    fast = call(stack.fast.url, "GetRun", content_type, request, origin)
    decoding = call(stack.decoding.url, "GetRun", content_type, request, origin)
    assert fast.status == 200, fast.body
    assert_same(fast, decoding, f"GetRun {content_type}", "GetRun")
    if content_type == "application/proto":
        assert runs_pb.GetRunResponse.FromString(fast.body).run.subsystem_id == "quirky"
    else:
        assert b'"subsystemId": "quirky"' in fast.body


@pytest.mark.parametrize("content_type", CODECS)
@pytest.mark.parametrize(
    ("rpc", "status", "message"),
    [
        ("GetRunSteps", 500, STEPS_ERROR),
        ("GetRunTimeline", 400, TIMELINE_ERROR),
        # The owner says not_found: both paths forget it, look again, find the same
        # owner, and pass its own words on.
        ("GetRunLogs", 404, LOGS_ERROR),
    ],
)
@pytest.mark.parametrize("origin", [ORIGIN, None], ids=["browser", "no-origin"])
def test_owner_errors_agree(
    stack: Stack, rpc: str, status: int, message: str | None, content_type: str, origin: str | None
) -> None:
    request = request_for(rpc, stack.quirky_run)
    fast = call(stack.fast.url, rpc, content_type, request, origin)
    decoding = call(stack.decoding.url, rpc, content_type, request, origin)
    assert fast.status == status, fast.body
    assert_same(fast, decoding, f"{rpc} {content_type}", rpc)
    assert message.format(run_id=stack.quirky_run).encode() in fast.body  # the owner's words


def test_gzip_is_negotiated_the_same(stack: Stack) -> None:
    answers = []
    for gateway in (stack.fast, stack.decoding):
        response = httpx.post(
            f"{gateway.url}/flowwatch.v1.RunService/GetRunSteps",
            content=runs_pb.GetRunStepsRequest(run_id=stack.orders_run).SerializeToString(),
            headers={"Content-Type": "application/proto", "Accept-Encoding": "gzip"},
        )
        assert response.headers["content-encoding"] == "gzip"
        # httpx decompresses; the decompressed bodies compare like the others.
        headers = {name: response.headers.get(name, "") for name in COMPARED_HEADERS}
        answers.append(Answer(response.status_code, headers, response.content))
    assert_same(answers[0], answers[1], "GetRunSteps gzip", "GetRunSteps")


def test_a_retrys_new_run_is_looked_up_once_then_passed_through(stack: Stack) -> None:
    # A finished run of the orders subsystem, whose owner a lookup taught the gateway.
    listed = post(
        stack.fast.url,
        "RunService/ListRuns",
        {"filter": {"subsystemIds": ["orders"], "statuses": ["RUN_STATUS_FAILED"]}},
    ).json()
    failed_run = listed["runs"][0]["id"]
    settle_owner(stack.fast.url, failed_run)
    retries_before = len(probes(stack.orders, "RetryRun"))
    clients_retrying = len(probes(stack.orders, "RetryRun", CLIENT_HEADER))
    retried = call(
        stack.fast.url,
        "RetryRun",
        "application/proto",
        runs_pb.RetryRunRequest(run_id=failed_run),
    )
    assert retried.status == 200, retried.body
    new_run_id = runs_pb.RetryRunResponse.FromString(retried.body).new_run_id
    assert new_run_id
    # The passthrough answered: one call, without a client of its own.
    assert len(probes(stack.orders, "RetryRun")) == retries_before + 1
    assert len(probes(stack.orders, "RetryRun", CLIENT_HEADER)) == clients_retrying
    # A retry's answer claims nothing (any subsystem could name any id there): the
    # new run is looked up once, by the decoding path, then passed through.
    first = call(
        stack.fast.url, "GetRun", "application/json", runs_pb.GetRunRequest(run_id=new_run_id)
    )
    assert first.status == 200, first.body
    before = len(probes(stack.orders, "GetRun"))
    clients_before = len(probes(stack.orders, "GetRun", CLIENT_HEADER))
    got = call(
        stack.fast.url, "GetRun", "application/json", runs_pb.GetRunRequest(run_id=new_run_id)
    )
    assert got.status == 200, got.body
    # Sent to the owner the lookup found, alone, as bytes: no broadcast, no decoding.
    assert len(probes(stack.orders, "GetRun")) == before + 1
    assert len(probes(stack.orders, "GetRun", CLIENT_HEADER)) == clients_before


def test_an_owner_that_does_not_answer_in_time_is_deadline_exceeded_on_both_paths(
    stack: Stack,
) -> None:
    # The quirky owner's PauseRun hangs; the caller gives it half a second.
    body = runs_pb.PauseRunRequest(run_id=stack.quirky_run).SerializeToString()
    answers = []
    for url in (stack.fast.url, stack.decoding.url):
        started = time.monotonic()
        response = httpx.post(
            f"{url}/flowwatch.v1.RunService/PauseRun",
            content=body,
            headers={
                "Content-Type": "application/proto",
                "Connect-Protocol-Version": "1",
                "Connect-Timeout-Ms": "500",
                "Accept-Encoding": "identity",
            },
            timeout=10,
        )
        assert time.monotonic() - started < PAUSE_HANG_S / 2, "the deadline was kept"
        headers = {name: response.headers.get(name, "") for name in COMPARED_HEADERS}
        answers.append(Answer(response.status_code, headers, response.content))
    assert answers[0].status == 504, answers[0].body
    assert json.loads(answers[0].body)["code"] == "deadline_exceeded"
    assert_same(answers[0], answers[1], "PauseRun past its deadline")


@pytest.mark.parametrize("content_type", CODECS)
def test_an_unreachable_owner_is_unavailable_on_both_paths(stack: Stack, content_type: str) -> None:
    stack.quirky.close()  # still registered (its registrar pings on), no longer listening
    request = runs_pb.GetRunRequest(run_id=stack.quirky_run)
    fast = call(stack.fast.url, "GetRun", content_type, request)
    decoding = call(stack.decoding.url, "GetRun", content_type, request)
    assert fast.status == 503, fast.body
    assert_same(fast, decoding, f"GetRun {content_type}", "GetRun")
    assert b"subsystem quirky unavailable" in fast.body


def test_a_fan_out_leaves_through_envoy_to_the_checked_address(stack: Stack) -> None:
    """The unary calls an API request makes take the request leg (proxy/upstream.py)."""
    routed_before = len(probes(stack.orders, "ListRuns", DESTINATION_HEADER))
    listed = post(stack.decoding.url, "RunService/ListRuns", {"pagination": {"limit": 5}})
    assert listed.status_code == 200, listed.text
    port = stack.orders_url.rsplit(":", 1)[1]
    routed = probes(stack.orders, "ListRuns", DESTINATION_HEADER)[routed_before:]
    assert routed and set(routed) == {f"127.0.0.1:{port}"}
