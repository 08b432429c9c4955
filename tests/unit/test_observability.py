"""Metrics, structured logs, the status page and the API-call hooks, in process."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.proxy.owners import RunOwnerCache
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.register import (
    REJECTION_LABELS,
    REJECTION_LINES_PER_PEER,
    RegisterService,
)
from flowwatch_gateway.serving.app import create_app, register_service_for
from flowwatch_gateway.serving.logs import JsonFormatter
from flowwatch_gateway.serving.metrics import GatewayMetrics
from flowwatch_gateway.serving.observe import ObserveApiCalls, current_call, trace_headers
from flowwatch_gateway.serving.status import GatewayFacts, UpstreamHealth, render_status_page
from tests.support.harness import FakeClock

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(subsystem_id: str, name: str = "") -> gateway_service_pb2.RegisterRequest:
    return gateway_service_pb2.RegisterRequest(
        subsystem_id=subsystem_id,
        subsystem_name=name or subsystem_id,
        flowwatch_endpoint=f"http://{subsystem_id}.internal:8080",
        workflows=[types_pb2.WorkflowDefinition(id="checkout", name="checkout")],
        capabilities=types_pb2.Capabilities(retry_run=True, streaming=True),
    )


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """family name -> {sorted labels: value} of every sample, via Prometheus' own parser."""
    parsed: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = parsed.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (("__name__", sample.name), *sorted(sample.labels.items()))
            samples[key] = sample.value
    return parsed


def value(parsed: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    key = (("__name__", sample or family), *sorted(labels.items()))
    return cast(float, parsed[family][key])


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def scrape(metrics: GatewayMetrics) -> dict[str, Any]:
    content_type, body = metrics.exposition()
    assert content_type.startswith("text/plain")
    return families(body.decode())


def test_metrics_families_follow_the_registry_and_the_cache() -> None:
    clock = FakeClock()
    registry = InMemoryRegistry(clock)
    health = UpstreamHealth(registry, clock)
    metrics = GatewayMetrics(registry, health)
    owners = RunOwnerCache(10)
    metrics.watch_owner_cache(owners)
    orders = registry.register(request("orders"))
    registry.register(request("payments"))

    parsed = scrape(metrics)
    assert value(parsed, "flowwatch_gateway_subsystems", state="connected") == 2
    assert value(parsed, "flowwatch_gateway_subsystems", state="stale") == 0
    # Every result label is there from the start, at 0.
    for result in ("accepted", *REJECTION_LABELS):
        sample = "flowwatch_gateway_registrations_total"
        assert value(parsed, "flowwatch_gateway_registrations", sample, result=result) == 0

    registry.mark_stale(orders.id, orders.epoch)
    owners.settle("run-1", "payments")
    owners.get("run-1")
    owners.get("run-2")
    metrics.registration("accepted")
    metrics.registration("invalid_api_key")
    metrics.heartbeat(0.003)
    metrics.partial_failure("ListRuns")
    metrics.fanned_out("ListRuns", 2)
    metrics.upstream_call("payments", "ListRuns", None, 0.02, unary=True)
    metrics.upstream_call("payments", "WatchRun", None, 30.0, unary=False)  # not timed
    metrics.upstream_call(
        "payments", "GetRun", ConnectError(Code.UNAVAILABLE, "refused"), 0.01, unary=True
    )

    parsed = scrape(metrics)
    assert value(parsed, "flowwatch_gateway_subsystems", state="connected") == 1
    assert value(parsed, "flowwatch_gateway_subsystems", state="stale") == 1
    assert value(parsed, "flowwatch_gateway_subsystems_unreachable") == 1
    total = "flowwatch_gateway_registrations_total"
    assert value(parsed, "flowwatch_gateway_registrations", total, result="accepted") == 1
    assert value(parsed, "flowwatch_gateway_registrations", total, result="invalid_api_key") == 1
    assert (
        value(
            parsed,
            "flowwatch_gateway_run_owner_cache_hits",
            "flowwatch_gateway_run_owner_cache_hits_total",
        )
        == 1
    )
    assert (
        value(
            parsed,
            "flowwatch_gateway_run_owner_cache_misses",
            "flowwatch_gateway_run_owner_cache_misses_total",
        )
        == 1
    )
    assert value(parsed, "flowwatch_gateway_run_owner_cache_size") == 1
    rtt = "flowwatch_gateway_heartbeat_rtt_seconds"
    assert value(parsed, rtt, f"{rtt}_count") == 1
    duration = "flowwatch_gateway_upstream_request_duration_seconds"
    assert value(parsed, duration, f"{duration}_count", rpc="ListRuns", code="ok") == 1
    assert value(parsed, duration, f"{duration}_count", rpc="GetRun", code="unavailable") == 1
    assert not any(("rpc", "WatchRun") in key for key in parsed[duration])
    partial = "flowwatch_gateway_partial_failures"
    assert value(parsed, partial, f"{partial}_total", rpc="ListRuns") == 1
    width = "flowwatch_gateway_fanout_width"
    assert value(parsed, width, f"{width}_bucket", rpc="ListRuns", le="1.0") == 0
    assert value(parsed, width, f"{width}_bucket", rpc="ListRuns", le="2.0") == 1
    # No label anywhere carries a subsystem id.
    for samples in parsed.values():
        for key in samples:
            assert all(v not in ("orders", "payments") for _, v in key)


async def test_the_app_serves_metrics_and_status_outside_cors() -> None:
    config = GatewayConfig(host="127.0.0.1", port=18093, ui_origins=("http://ui.example",))
    app = create_app(config)
    async with app.router.lifespan_context(app), client_for(app) as client:
        origin = {"Origin": "http://ui.example"}
        api = await client.post(
            "/flowwatch.v1.WorkflowService/ListSubsystems",
            json={},
            headers={**origin, "Connect-Protocol-Version": "1"},
        )
        assert api.headers["access-control-allow-origin"] == "http://ui.example"
        metrics = await client.get("/metrics", headers=origin)
        assert metrics.status_code == 200
        assert "access-control-allow-origin" not in metrics.headers
        parsed = families(metrics.text)
        assert value(parsed, "flowwatch_gateway_subsystems", state="connected") == 0
        status = await client.get("/status", headers=origin)
        assert status.status_code == 200
        assert "access-control-allow-origin" not in status.headers
        assert status.headers["content-type"].startswith("text/html")
        assert '<meta http-equiv="refresh" content="5">' in status.text
        assert 'id="readiness">ready<' in status.text
        assert "api_key</th><td><code>unset" in status.text


async def test_with_a_metrics_address_the_main_port_has_no_metrics() -> None:
    config = GatewayConfig(host="127.0.0.1", port=18094, metrics_addr="127.0.0.1:1")
    async with client_for(create_app(config)) as client:  # no lifespan: no listener
        assert (await client.get("/metrics")).status_code == 404
        status = await client.get("/status")
        assert status.status_code == 200 and 'id="readiness">starting<' in status.text


def test_the_status_page_escapes_and_shows_each_state() -> None:
    clock = FakeClock()
    registry = InMemoryRegistry(clock)
    health = UpstreamHealth(registry, clock)
    registry.register(request("ok-one"))
    stale = registry.register(request("gone", name="<script>alert(1)</script>"))
    registry.register(request("silent"))
    clock.advance(75)
    registry.mark_stale(stale.id, stale.epoch)
    health.record("silent", "ListRuns", ConnectError(Code.UNAVAILABLE, "<b>refused</b>"))
    health.record("nobody", "ListRuns", ConnectError(Code.UNAVAILABLE, "not registered"))
    clock.advance(10)
    facts = GatewayFacts("1.2.3", 3700, "ready", [("api_key", "set")])

    page = render_status_page(registry.instances(), health, clock, facts)

    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>refused" not in page and "&lt;b&gt;refused&lt;/b&gt;" in page
    assert 'data-subsystem="ok-one" data-state="connected"' in page
    assert 'data-subsystem="gone" data-state="stale"><td>' in page
    assert '<span class="state stale">stale</span> 10s' in page
    assert '<span class="state unreachable">unreachable</span> 10s' in page
    assert "nobody" not in page  # failures of unknown subsystems are not kept
    assert "retry_run, streaming" in page and "up 1h01m" in page
    # Upstream success clears "unreachable"; removal forgets the history.
    health.record("silent", "ListRuns", None)
    assert health.unreachable_for("silent") is None and len(health.recent("silent")) == 1
    silent = registry.get("silent")
    assert silent is not None
    registry.deregister("silent")
    assert health.recent("silent") == []


def test_json_logs_carry_the_extra_fields_on_one_line() -> None:
    record = logging.LogRecord(
        "flowwatch_gateway.x", logging.INFO, __file__, 1, "a\nb %s", ("c",), None
    )
    record.subsystem_id = "orders"
    record.rpc = "ListRuns"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["event"] == "a\nb c" and entry["level"] == "info"
    assert entry["logger"] == "flowwatch_gateway.x" and entry["time"].endswith("+00:00")
    assert (entry["subsystem_id"], entry["rpc"]) == ("orders", "ListRuns")


def test_only_a_well_formed_traceparent_is_forwarded() -> None:
    assert trace_headers([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"a=1")]) == {
        "traceparent": TRACEPARENT,
        "tracestate": "a=1",
    }
    assert trace_headers([(b"traceparent", b"00-zz-00f067aa0ba902b7-01\r\nx: y")]) == {}
    assert trace_headers([(b"tracestate", b"a=1")]) == {}


@pytest.mark.parametrize("propagate", [False, True])
def test_api_calls_get_a_record_with_trace_headers_only_when_enabled(propagate: bool) -> None:
    seen: list[dict[str, str]] = []
    reported: list[tuple[str, object]] = []

    async def api(scope: Any, receive: Any, send: Any) -> None:
        record = current_call.get()
        assert record is not None
        seen.append(record.trace_headers)
        record.subsystems.update({"a", "b"})
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"flowwatch-partial-failure", b"c: stale")
        ]})  # fmt: skip

    class Sink:
        def partial_failure(self, rpc: str) -> None:
            reported.append(("partial", rpc))

        def fanned_out(self, rpc: str, width: int) -> None:
            reported.append(("width", width))

    middleware = ObserveApiCalls(
        api, rpcs={"/flowwatch.v1.RunService/ListRuns": "ListRuns"}, sink=Sink(),
        propagate_trace=propagate,
    )  # fmt: skip
    scope = {
        "type": "http",
        "path": "/flowwatch.v1.RunService/ListRuns",
        "headers": [(b"traceparent", TRACEPARENT.encode())],
    }

    async def send(message: Any) -> None:
        pass

    asyncio.run(middleware(scope, cast(Any, None), send))
    assert seen == [{"traceparent": TRACEPARENT} if propagate else {}]
    assert reported == [("partial", "ListRuns"), ("width", 2)]
    assert current_call.get() is None


def test_refusals_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Observer:
        def __init__(self) -> None:
            self.results: list[str] = []

        def registration(self, result: str) -> None:
            self.results.append(result)

        def heartbeat(self, rtt_seconds: float) -> None:
            pass

    async def attempt(service: RegisterService) -> None:
        async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
            message = gateway_service_pb2.SubsystemMessage(register=request("orders"))
            message.register.api_key = "wrong"
            yield message

        with pytest.raises(ConnectError):
            async for _ in service.register(requests(), cast(Any, None)):
                pass

    observer = Observer()
    config = GatewayConfig(host="127.0.0.1", port=18095, api_key="right")
    service = register_service_for(config, InMemoryRegistry(), observer=observer)
    caplog.set_level(logging.INFO, "flowwatch_gateway.registry.register")
    for _ in range(5):
        asyncio.run(attempt(service))
    assert observer.results == ["invalid_api_key"] * 5
    rejected = [r for r in caplog.records if "subsystem rejected" in r.getMessage()]
    assert len(rejected) == 1
    assert getattr(rejected[0], "reason", None) == "invalid_api_key"
    assert getattr(rejected[0], "subsystem_id", None) == "orders"


def test_refusals_under_ever_new_ids_are_bounded_per_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The once-a-minute rule is per claimed id; the peer and all peers have budgets too."""

    async def attempt(service: RegisterService, subsystem_id: str, peer: str) -> None:
        async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
            message = gateway_service_pb2.SubsystemMessage(register=request(subsystem_id))
            message.register.api_key = "wrong"
            yield message

        with pytest.raises(ConnectError):
            async for _ in service.serve(requests(), peer):
                pass

    async def attempts(service: RegisterService) -> None:
        for index in range(200):
            await attempt(service, f"id-{index}", f"10.0.0.7:{40000 + index}")
        await attempt(service, "other", "10.0.0.8:5555")
        await service.disconnect_all("test over", flush_timeout=0.1)

    config = GatewayConfig(host="127.0.0.1", port=18095, api_key="right")
    service = register_service_for(config, InMemoryRegistry())
    caplog.set_level(logging.INFO, "flowwatch_gateway.registry.register")
    asyncio.run(attempts(service))
    lines = [r.getMessage() for r in caplog.records]
    rejected = [line for line in lines if line.startswith("subsystem rejected")]
    assert len(rejected) == REJECTION_LINES_PER_PEER + 1
    assert sum("peer=10.0.0.7 " in line for line in rejected) == REJECTION_LINES_PER_PEER
    assert sum("more than 5 from one source" in line for line in lines) == 1
    summary = [line for line in lines if "not logged in the last" in line]
    assert len(summary) == 1 and "195 not logged" in summary[0]
    assert summary[0].endswith("most from 10.0.0.7 (195)")
