"""The passthrough sends callers only what the FlowWatch schema allows (in-process).

A hostile owner answers per-run calls with JSON of its own making, or with valid
protobuf carrying fields the schema does not have; the passthrough (in front of a
stub stack that records fallbacks) must answer as the decoding path would: the
message as the schema defines it, or an error in the gateway's words.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from pyqwest.testing import ASGITransport

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import GuardedTransport, HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.serving.passthrough import Passthrough

RUN_ID = "victim-run-1"
INJECTED = '<img src=x onerror="alert(1)">'
Scope = MutableMapping[str, Any]


class HostileOwner:
    """Answers every rpc with what `reply` holds: (content type, body)."""

    def __init__(self) -> None:
        self.reply: tuple[str, bytes] = ("application/proto", b"")
        self.seen_types: list[str] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        headers = dict(scope["headers"])
        self.seen_types.append(headers.get(b"content-type", b"").decode())
        content_type, body = self.reply
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _stack_app(scope: Scope, receive: Any, send: Any) -> None:
    """The decoding path's stand-in: a fallback is answered 599, so a test sees it."""
    await send({"type": "http.response.start", "status": 599, "headers": []})
    await send({"type": "http.response.body", "body": b"fell back"})


@pytest.fixture
async def setup() -> AsyncIterator[tuple[httpx.AsyncClient, HostileOwner]]:
    owner = HostileOwner()
    transport = GuardedTransport(ASGITransport(owner), None)

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", transport)

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=2.0), connect=connect)
    registry.register(
        gateway_service_pb2.RegisterRequest(
            subsystem_id="hostile",
            flowwatch_endpoint="http://hostile.test",
            capabilities=types_pb2.Capabilities(),
            workflows=[types_pb2.WorkflowDefinition(id="wf")],
        )
    )
    gateway.per_run.owners.settle(RUN_ID, "hostile")
    app = Passthrough(_stack_app, calls=gateway.per_run)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    )
    try:
        yield client, owner
    finally:
        await client.aclose()
        await gateway.aclose()


async def _json_call(client: httpx.AsyncClient, rpc: str) -> httpx.Response:
    return await client.post(
        f"/flowwatch.v1.RunService/{rpc}",
        content=json.dumps({"runId": RUN_ID}),
        headers={"content-type": "application/json", "connect-protocol-version": "1"},
    )


@pytest.mark.anyio
async def test_a_subsystems_own_json_never_reaches_the_caller(
    setup: tuple[httpx.AsyncClient, HostileOwner],
) -> None:
    client, owner = setup
    owner.reply = (
        "application/json",
        json.dumps({"steps": "not-a-list", "injected": INJECTED}).encode(),
    )
    answer = await _json_call(client, "GetRunSteps")
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal"
    assert "injected" not in answer.text and "onerror" not in answer.text
    assert set(owner.seen_types) == {"application/proto"}  # binary, whatever the caller


@pytest.mark.anyio
async def test_fields_outside_the_schema_are_dropped_for_json_callers(
    setup: tuple[httpx.AsyncClient, HostileOwner],
) -> None:
    client, owner = setup
    valid = runs.GetRunResponse(run=types_pb2.Run(id=RUN_ID, workflow_id="wf"))
    # Field 99 is not in GetRunResponse: valid protobuf, unknown to the schema.
    unknown = b"\xfa\x06" + bytes([len(INJECTED)]) + INJECTED.encode()
    owner.reply = ("application/proto", valid.SerializeToString() + unknown)
    answer = await _json_call(client, "GetRun")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"run": {"id": RUN_ID, "workflowId": "wf", "subsystemId": "hostile"}}


@pytest.mark.anyio
async def test_garbage_bytes_are_an_error_in_the_gateways_words(
    setup: tuple[httpx.AsyncClient, HostileOwner],
) -> None:
    client, owner = setup
    owner.reply = ("application/proto", b"\xff\xff\xff\xff")
    answer = await _json_call(client, "GetRunTimeline")
    assert answer.status_code == 500
    assert answer.json()["message"] == (
        "subsystem hostile sent a GetRunTimeline answer that is not a valid GetRunTimelineResponse"
    )


@pytest.mark.anyio
async def test_an_answer_about_another_run_is_refused(
    setup: tuple[httpx.AsyncClient, HostileOwner],
) -> None:
    client, owner = setup
    other = runs.GetRunResponse(run=types_pb2.Run(id="someone-elses-run"))
    owner.reply = ("application/proto", other.SerializeToString())
    answer = await _json_call(client, "GetRun")
    assert answer.status_code == 500
    assert "with another run" in answer.json()["message"]
    assert "someone-elses-run" not in answer.text
