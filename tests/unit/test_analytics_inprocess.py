"""Merged analytics against the exact union, in-process: demo engines behind ASGI.

Subsystems with and without sketches (the latter answer like FlowWatch servers that
know nothing of this gateway), one of them much slower than the rest; the merged
percentiles are compared with the nearest-rank percentiles of all their runs
together, computed here from the engines' data.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyqwest.testing import ASGITransport

from flowwatch_gateway.api.context import (
    ANALYTICS_METHOD_HEADER,
    APPROXIMATE_HEADER,
    CallContext,
)
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.demo import analytics as calc
from flowwatch_gateway.demo.app import create_demo_app
from flowwatch_gateway.demo.dataset import to_duration, to_timestamp
from flowwatch_gateway.demo.engine import InMemoryEngine
from flowwatch_gateway.gen.flowwatch.v1 import analytics_service_pb2 as analytics
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.proxy.analytics import AnalyticsProxy
from flowwatch_gateway.proxy.fanout import FanOut
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RUNS_EACH = 300

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Upstream:
    engine: InMemoryEngine
    calls: list[str] = field(default_factory=list)

    def app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        inner = create_demo_app(self.engine)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.calls.append(scope["path"].rsplit("/", 1)[-1])
            await inner(scope, receive, send)

        return app


def slow_down(engine: InMemoryEngine, factor: int) -> None:
    """Make every finished run of `engine` take `factor` times as long."""
    for run in engine.data.runs:
        if run.HasField("duration"):
            longer = timedelta(microseconds=run.duration.ToMicroseconds() * factor)
            run.duration.CopyFrom(to_duration(longer))
            run.finished_at.CopyFrom(to_timestamp(run.started_at.ToDatetime(UTC) + longer))


@dataclass
class Stack:
    gateway: Gateway
    proxy: AnalyticsProxy
    upstreams: dict[str, Upstream]
    clock: list[float]

    def calls(self) -> list[str]:
        return [call for u in self.upstreams.values() for call in u.calls]


Layout = list[tuple[str, bool, int]]  # (subsystem id, sends sketches, slowdown factor)


async def build(layout: Layout, *, exact_max_runs: int = 20_000) -> Stack:
    upstreams: dict[str, Upstream] = {}
    for seed, (name, sketched, factor) in enumerate(layout):
        engine = InMemoryEngine.demo(
            name, seed=seed, now=NOW, run_count=RUNS_EACH, emit_sketches=sketched
        )
        slow_down(engine, factor)
        upstreams[name] = Upstream(engine)
    apps = {f"http://{name}.test": u.app() for name, u in upstreams.items()}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", ASGITransport(apps[endpoint]))

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=5.0), connect=connect)
    for name in upstreams:
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=name,
                flowwatch_endpoint=f"http://{name}.test",
                capabilities=types_pb2.Capabilities(analytics=True),
            )
        )
    # A day after the data: every bucket of the window has closed.
    clock = [(NOW + timedelta(days=1)).timestamp()]
    proxy = AnalyticsProxy(
        registry,
        FanOut(registry, gateway.pool, 5.0),
        exact_max_runs=exact_max_runs,
        clock=lambda: clock[0],
    )
    return Stack(gateway, proxy, upstreams, clock)


@pytest.fixture
async def stacks() -> AsyncIterator[list[Stack]]:
    built: list[Stack] = []
    yield built
    for stack in built:
        await stack.gateway.aclose()


def exact_latency(stack: Stack, request: analytics.GetLatencyRequest) -> list[tuple[int, ...]]:
    """Nearest-rank p50/p95/p99 per bucket of every subsystem's runs together."""
    window = calc.resolve_window(request.filter.time_range, request.filter.granularity, NOW)
    runs = [run for u in stack.upstreams.values() for run in u.engine.data.runs]
    selected = calc.select_runs(runs, workflow_id="", subsystem_id="", window=window)
    return [
        tuple(int(v.ToNanoseconds()) for v in (b.p50, b.p95, b.p99))
        for b in calc.latency(selected, window)
    ]


def errors(merged: analytics.GetLatencyResponse, exact: list[tuple[int, ...]]) -> list[float]:
    """Worst relative error of p95/p99 per bucket that has runs."""
    found = []
    for bucket, truth in zip(merged.buckets, exact, strict=True):
        if not truth[2]:
            continue
        got = (int(bucket.p95.ToNanoseconds()), int(bucket.p99.ToNanoseconds()))
        found.append(max(abs(g - t) / t for g, t in zip(got, truth[1:], strict=True)))
    return found


LAYOUTS: dict[str, Layout] = {
    "all-sketches": [("orders", True, 1), ("payments", True, 1), ("slow", True, 20)],
    "no-sketches": [("orders", False, 1), ("payments", False, 1), ("slow", False, 20)],
    "mixed": [("orders", True, 1), ("payments", False, 1), ("slow", False, 20)],
}
EXPECTED_METHOD = {
    "all-sketches": "sketch;rel-err=0.01",
    "no-sketches": "exact",
    "mixed": "sketch;rel-err=0.01",
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(LAYOUTS))
async def test_merged_latency_is_within_2_percent_median_5_worst_of_the_exact_union(
    stacks: list[Stack], name: str
) -> None:
    stack = await build(LAYOUTS[name])
    stacks.append(stack)
    request = analytics.GetLatencyRequest(filter=analytics.AnalyticsFilter(granularity="1h"))
    ctx = CallContext.with_timeout(10.0)

    merged = await stack.proxy.get_latency(request, ctx)

    assert ctx.response_headers[ANALYTICS_METHOD_HEADER] == EXPECTED_METHOD[name]
    assert APPROXIMATE_HEADER not in ctx.response_headers
    found = errors(merged, exact_latency(stack, request))
    assert len(found) >= 20
    assert statistics.median(found) <= 0.02
    assert max(found) <= 0.05
    if name == "no-sketches":
        assert max(found) == 0.0
    listed = "ListRuns" in stack.calls()
    assert listed == (name != "all-sketches")


@pytest.mark.anyio
async def test_over_the_budget_the_answer_falls_back_and_says_so(stacks: list[Stack]) -> None:
    stack = await build(LAYOUTS["no-sketches"], exact_max_runs=50)
    stacks.append(stack)
    ctx = CallContext.with_timeout(10.0)

    await stack.proxy.get_latency(analytics.GetLatencyRequest(), ctx)

    method = ctx.response_headers[ANALYTICS_METHOD_HEADER]
    assert method.startswith("approximate;reason=exact-budget-exceeded:")
    assert ctx.response_headers[APPROXIMATE_HEADER].startswith("exact-budget-exceeded")
    assert "ListRuns" not in stack.calls()


@pytest.mark.anyio
async def test_polling_the_same_window_reuses_answers_and_closed_buckets(
    stacks: list[Stack],
) -> None:
    stack = await build(LAYOUTS["no-sketches"])
    stacks.append(stack)
    request = analytics.GetLatencyRequest()
    first_ctx = CallContext.with_timeout(10.0)
    first = await stack.proxy.get_latency(request, first_ctx)
    first_calls = len(stack.calls())
    first_pages = stack.calls().count("ListRuns")

    again_ctx = CallContext.with_timeout(10.0)
    again = await stack.proxy.get_latency(request, again_ctx)
    assert again == first
    assert len(stack.calls()) == first_calls  # answered from the cache
    assert again_ctx.response_headers == first_ctx.response_headers

    stack.clock[0] += 10  # past the answer cache's life
    for upstream in stack.upstreams.values():
        upstream.calls.clear()
    later = await stack.proxy.get_latency(request, CallContext.with_timeout(10.0))
    assert later == first
    assert stack.calls().count("GetLatency") == 3
    # Closed buckets whose runs had all finished come from the cache; only the
    # partial first bucket and the buckets with runs still going are listed again.
    assert len(stack.proxy.durations) > 0
    assert stack.calls().count("ListRuns") < first_pages


@pytest.mark.anyio
async def test_step_durations_and_heatmap_merge_sketches(stacks: list[Stack]) -> None:
    stack = await build(LAYOUTS["all-sketches"])
    stacks.append(stack)
    ctx = CallContext.with_timeout(10.0)
    merged = await stack.proxy.get_step_duration(analytics.GetStepDurationRequest(), ctx)
    assert ctx.response_headers[ANALYTICS_METHOD_HEADER] == "sketch;rel-err=0.01"

    window = calc.resolve_window(types_pb2.TimeRange(), "1h", NOW)
    executions = [
        execution
        for u in stack.upstreams.values()
        for steps in u.engine.data.steps.values()
        for execution in steps
    ]
    truth = {e.step_name: e for e in calc.step_duration(executions, window).steps}
    assert {s.step_name for s in merged.steps} == set(truth)
    for step in merged.steps:
        expected = truth[step.step_name]
        assert step.sample_count == expected.sample_count
        for got, want in (
            (step.total.p95, expected.total.p95),
            (step.total.p99, expected.total.p99),
        ):
            exact = int(want.ToNanoseconds())
            assert abs(int(got.ToNanoseconds()) - exact) <= 0.01 * exact + 1

    heat_ctx = CallContext.with_timeout(10.0)
    await stack.proxy.get_step_heatmap(analytics.GetStepHeatmapRequest(), heat_ctx)
    assert heat_ctx.response_headers[ANALYTICS_METHOD_HEADER] == "exact"
