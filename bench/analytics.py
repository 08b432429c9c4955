#!/usr/bin/env python3
"""Merged latency percentiles: error against the exact union, and cost, per method.

    .venv/bin/python bench/analytics.py            # 3 and 50 subsystems
    .venv/bin/python bench/analytics.py --sizes 3  # just one size

Demo subsystems run in-process behind pyqwest's ASGI transport (no sockets, so the
times are the gateway's own work plus the demo's; the call counts are what a real
deployment would send). One subsystem in ten (at least one) is 20x slower than the
rest, the case a weighted mean hides. Ground truth: the nearest-rank p95/p99 per
hourly bucket of every subsystem's finished runs together, from the engines' data.

Methods: `approximate` (no sketches, exact budget 0: the old weighted mean),
`exact` (no sketches: the gateway lists finished runs with ListRuns), `sketch`
(every subsystem sends sketches). `poll` is the same question again after the
5 s answer cache expired: closed buckets are not listed again. Not a test; prints
a table. Runs in well under 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pyqwest.testing import ASGITransport

from flowwatch_gateway.api.context import ANALYTICS_METHOD_HEADER, CallContext
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
SLOW_FACTOR = 20

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def counted(app: ASGIApp, calls: list[int]) -> ASGIApp:
    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            calls[0] += 1
        await app(scope, receive, send)

    return wrapper


def engines(count: int, *, sketches: bool) -> list[InMemoryEngine]:
    built = []
    for index in range(count):
        engine = InMemoryEngine.demo(
            f"sub-{index:02d}", seed=index, now=NOW, run_count=RUNS_EACH, emit_sketches=sketches
        )
        if index % 10 == 0:  # one subsystem in ten is much slower
            for run in engine.data.runs:
                if run.HasField("duration"):
                    longer = timedelta(microseconds=run.duration.ToMicroseconds() * SLOW_FACTOR)
                    run.duration.CopyFrom(to_duration(longer))
                    run.finished_at.CopyFrom(to_timestamp(run.started_at.ToDatetime(UTC) + longer))
        built.append(engine)
    return built


def exact_union(all_engines: list[InMemoryEngine]) -> list[tuple[int, int]]:
    window = calc.resolve_window(types_pb2.TimeRange(), "1h", NOW)
    runs = [run for engine in all_engines for run in engine.data.runs]
    selected = calc.select_runs(runs, workflow_id="", subsystem_id="", window=window)
    return [
        (int(b.p95.ToNanoseconds()), int(b.p99.ToNanoseconds()))
        for b in calc.latency(selected, window)
    ]


@dataclass
class Row:
    subsystems: int
    method: str
    header: str
    p95_median: float
    p95_worst: float
    p99_median: float
    p99_worst: float
    calls: int
    seconds: float
    poll_calls: int
    poll_seconds: float


def relative_errors(
    merged: analytics.GetLatencyResponse, truth: list[tuple[int, int]], position: int
) -> list[float]:
    errors = []
    for bucket, exact in zip(merged.buckets, truth, strict=True):
        if exact[position]:
            got = int((bucket.p95, bucket.p99)[position].ToNanoseconds())
            errors.append(abs(got - exact[position]) / exact[position])
    return errors


async def measure(count: int, method: str) -> Row:
    all_engines = engines(count, sketches=method == "sketch")
    calls = [0]
    apps = {
        f"http://{e.subsystem_id}.test": counted(create_demo_app(e), calls) for e in all_engines
    }

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", ASGITransport(apps[endpoint]))

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(upstream_timeout=30.0), connect=connect)
    try:
        for engine in all_engines:
            registry.register(
                gateway_service_pb2.RegisterRequest(
                    subsystem_id=engine.subsystem_id,
                    flowwatch_endpoint=f"http://{engine.subsystem_id}.test",
                )
            )
        clock = [(NOW + timedelta(days=1)).timestamp()]
        proxy = AnalyticsProxy(
            registry,
            FanOut(registry, gateway.pool, 30.0),
            exact_max_runs=0 if method == "approximate" else 20_000,
            clock=lambda: clock[0],
        )
        await asyncio.sleep(0.5)  # let the pool's background probes finish
        calls[0] = 0
        ctx = CallContext.with_timeout(60.0)
        started = time.perf_counter()
        merged = await proxy.get_latency(analytics.GetLatencyRequest(), ctx)
        seconds = time.perf_counter() - started
        cold_calls = calls[0]

        clock[0] += 10  # the answer cache has expired; the duration cache has not
        calls[0] = 0
        started = time.perf_counter()
        await proxy.get_latency(analytics.GetLatencyRequest(), CallContext.with_timeout(60.0))
        poll_seconds = time.perf_counter() - started
        poll_calls = calls[0]
    finally:
        await gateway.aclose()

    truth = exact_union(all_engines)
    p95 = relative_errors(merged, truth, 0)
    p99 = relative_errors(merged, truth, 1)
    return Row(
        count,
        method,
        ctx.response_headers.get(ANALYTICS_METHOD_HEADER, ""),
        statistics.median(p95),
        max(p95),
        statistics.median(p99),
        max(p99),
        cold_calls,
        seconds,
        poll_calls,
        poll_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 50])
    args = parser.parse_args()
    print(
        "| subsystems | method | header | p95 err median / worst | p99 err median / worst "
        "| calls | time | poll calls | poll time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for count in args.sizes:
        for method in ("approximate", "exact", "sketch"):
            row = asyncio.run(measure(count, method))
            header = row.header.split(";reason=")[0]
            print(
                f"| {row.subsystems} | {row.method} | `{header}` "
                f"| {row.p95_median:.1%} / {row.p95_worst:.1%} "
                f"| {row.p99_median:.1%} / {row.p99_worst:.1%} "
                f"| {row.calls} | {row.seconds * 1000:.0f} ms "
                f"| {row.poll_calls} | {row.poll_seconds * 1000:.0f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
