"""The app around Register: probes, CORS for the UI, and the registry-backed rpcs."""

from __future__ import annotations

import httpx
import pytest

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from tests.support.harness import (
    TEST_API_KEY,
    GatewayProcess,
    register_client,
    register_request,
    start_gateway,
)

pytestmark = pytest.mark.anyio
UI = "http://localhost:5173"


def post(url: str, rpc: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1", **headers},
        timeout=5,
    )


def test_probes(fast_gateway: GatewayProcess) -> None:
    healthz = httpx.get(f"{fast_gateway.url}/healthz")
    assert (healthz.status_code, healthz.text) == (200, "ok")
    assert httpx.get(f"{fast_gateway.url}/readyz").status_code == 200


def test_cors_preflight_allows_the_ui_origin(fast_gateway: GatewayProcess) -> None:
    response = httpx.options(
        f"{fast_gateway.url}/flowwatch.v1.WorkflowService/ListSubsystems",
        headers={
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "connect-protocol-version,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI
    allowed = response.headers["access-control-allow-headers"].lower()
    for header in ("connect-protocol-version", "content-type", "connect-timeout-ms"):
        assert header in allowed
    assert "POST" in response.headers["access-control-allow-methods"]


def test_cors_refuses_other_origins(fast_gateway: GatewayProcess) -> None:
    response = httpx.options(
        f"{fast_gateway.url}/flowwatch.v1.WorkflowService/ListSubsystems",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_exposes_grpc_and_flowwatch_headers(fast_gateway: GatewayProcess) -> None:
    response = post(fast_gateway.url, "WorkflowService/ListSubsystems", {}, Origin=UI)
    assert response.status_code == 200
    exposed = response.headers["access-control-expose-headers"].lower()
    for header in ("grpc-status", "grpc-message", "flowwatch-partial-failure"):
        assert header in exposed
    assert "flowwatch-approximate" in exposed


async def test_get_subsystem_and_capabilities_come_from_the_registry(
    fast_gateway: GatewayProcess,
) -> None:
    url = fast_gateway.url
    retry = types_pb2.Capabilities(retry_run=True)
    cancel = types_pb2.Capabilities(
        cancel_run=True,
        search=types_pb2.SearchCapabilities(enabled=True, engine="sqlite", scopes=["runs"]),
    )
    first = register_request(
        "app-a",
        api_key=TEST_API_KEY,
        capabilities=retry,
        workflows=[types_pb2.WorkflowDefinition(id="wf-a", name="A")],
    )
    second = register_request("app-b", api_key=TEST_API_KEY, capabilities=cancel)
    async with (
        register_client(url, first) as a,
        register_client(url, second) as b,
    ):
        await a.wait_for("registered")
        await b.wait_for("registered")
        found = post(url, "WorkflowService/GetSubsystem", {"subsystemId": "app-a"}).json()
        assert found["subsystem"]["subsystem"]["id"] == "app-a"
        assert found["subsystem"]["subsystem"]["metadata"]["gateway.state"] == "connected"
        assert [w["id"] for w in found["workflows"]] == ["wf-a"]
        assert found["workflows"][0]["subsystemId"] == "app-a"
        caps = post(url, "WorkflowService/GetCapabilities", {}).json()["capabilities"]
        assert caps["retryRun"] is True
        assert caps["cancelRun"] is True
        assert caps["search"]["enabled"] is True
        assert "pauseRun" not in caps  # false is omitted in JSON: nobody offered it

    missing = post(url, "WorkflowService/GetSubsystem", {"subsystemId": "nobody"})
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert "'nobody'" in missing.json()["message"]


EMPTY_ANSWERS: dict[str, dict[str, object]] = {
    "RunService/ListRuns": {},
    "WorkflowService/ListWorkflows": {},
    "WorkflowService/ListSubsystems": {},
    "WorkflowService/GetCapabilities": {"capabilities": {}},
    "AnalyticsService/GetThroughput": {},
    "AnalyticsService/GetLatency": {},
    "AnalyticsService/GetFailureRate": {},
    "AnalyticsService/GetStepHeatmap": {},
    "SearchService/Search": {"facets": {}},
}


def test_a_gateway_without_subsystems_answers_lists_and_analytics_empty() -> None:
    """A fresh deployment's dashboard shows "nothing yet", not errors."""
    with start_gateway(server="uvicorn") as gateway:
        for rpc, empty in EMPTY_ANSWERS.items():
            response = post(gateway.url, rpc, {})
            assert response.status_code == 200, f"{rpc}: {response.text}"
            body = response.json()
            assert {k: v for k, v in body.items() if k != "pagination"} == empty, rpc
            assert not body.get("pagination", {}).get("nextCursor"), rpc
