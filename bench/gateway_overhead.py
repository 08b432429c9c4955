"""Gateway overhead: the same calls through the gateway and directly against a subsystem.

A pyvoy gateway and three demo subsystems (orders, payments, shipping; each its own
process under pyvoy, registered through the real client) run on loopback. Once all
three are connected and discovered, each rpc is timed directly against `orders` and
through the gateway, back to back:

  GetRun         routed to the owner (the gateway's run-owner cache is warm)
  ListRuns 25    the gateway asks all three subsystems and merges; direct asks one
  GetThroughput  the gateway fans out and adds the buckets; direct asks one

Run from the repository root:

    .venv/bin/python bench/gateway_overhead.py            # full run
    .venv/bin/python bench/gateway_overhead.py --quick    # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import _common
from _api import FlowWatchApi, wait_until_discovered, without_partial_failure

from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_pb2,
    run_service_pb2,
    types_pb2,
)

SUBSYSTEM_SEEDS = {"orders": 1, "payments": 2, "shipping": 3}
DIRECT_SUBSYSTEM = "orders"
LIST_LIMIT = 25


def get_run_call(api: FlowWatchApi, run_id: str) -> Callable[[], Awaitable[None]]:
    request = run_service_pb2.GetRunRequest(run_id=run_id)

    async def call() -> None:
        run = (await api.runs.get_run(request)).run
        if run.id != run_id or run.subsystem_id != DIRECT_SUBSYSTEM:
            raise RuntimeError(f"GetRun via {api.name} returned {run.id!r} of {run.subsystem_id!r}")

    return without_partial_failure(api, "GetRun", call)


def list_runs_call(api: FlowWatchApi, expected_total: int) -> Callable[[], Awaitable[None]]:
    request = run_service_pb2.ListRunsRequest(
        pagination=types_pb2.PaginationRequest(limit=LIST_LIMIT)
    )

    async def call() -> None:
        answer = await api.runs.list_runs(request)
        if len(answer.runs) != LIST_LIMIT or answer.pagination.total_count != expected_total:
            raise RuntimeError(
                f"ListRuns via {api.name}: {len(answer.runs)} runs of "
                f"{answer.pagination.total_count}, expected {LIST_LIMIT} of {expected_total}"
            )

    return without_partial_failure(api, "ListRuns", call)


def throughput_call(api: FlowWatchApi) -> Callable[[], Awaitable[None]]:
    # No filter: the last 24 h in 1 h buckets, as the analytics page opens.
    request = analytics_service_pb2.GetThroughputRequest()

    async def call() -> None:
        answer = await api.analytics.get_throughput(request)
        if not any(bucket.total for bucket in answer.buckets):
            raise RuntimeError(f"GetThroughput via {api.name}: no runs in any bucket")

    return without_partial_failure(api, "GetThroughput", call)


@dataclass(frozen=True)
class Pair:
    rpc: str
    concurrency: int
    direct: _common.Sample
    gateway: _common.Sample


async def measure_all(
    gateway_url: str, endpoints: dict[str, str], args: argparse.Namespace
) -> list[Pair]:
    gateway = FlowWatchApi("gateway", gateway_url)
    subsystems = [FlowWatchApi(sid, url) for sid, url in endpoints.items()]
    direct = next(api for api in subsystems if api.name == DIRECT_SUBSYSTEM)
    try:
        await wait_until_discovered(gateway, subsystems)
        _common.note(f"all {len(subsystems)} subsystems connected and discovered; timing")
        first = await direct.runs.list_runs(
            run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=1))
        )
        run_id = first.runs[0].id
        totals = {"direct": first.pagination.total_count}
        totals["gateway"] = sum([await api.run_total() for api in subsystems])

        def calls(api: FlowWatchApi, total: int) -> dict[str, Callable[[], Awaitable[None]]]:
            return {
                "GetRun": get_run_call(api, run_id),
                f"ListRuns {LIST_LIMIT}": list_runs_call(api, total),
                "GetThroughput": throughput_call(api),
            }

        direct_calls = calls(direct, totals["direct"])
        gateway_calls = calls(gateway, totals["gateway"])
        pairs: list[Pair] = []
        for rpc in direct_calls:
            for concurrency in args.concurrency:
                timed: dict[str, _common.Sample] = {}
                for path, call in (("direct", direct_calls[rpc]), ("gateway", gateway_calls[rpc])):
                    timed[path] = await _common.measure(
                        call, calls=args.calls, concurrency=concurrency, warmup=args.warmup
                    )
                    _common.progress(f"{rpc} c={concurrency} {path}", timed[path])
                pairs.append(Pair(rpc, concurrency, timed["direct"], timed["gateway"]))
        return pairs
    finally:
        for api in (gateway, *subsystems):
            await api.close()


def results_table(pairs: list[Pair]) -> str:
    """Direct and gateway side by side; ratios are gateway divided by direct."""
    return _common.format_table(
        [
            "rpc",
            "conc",
            "direct calls/s",
            "gateway calls/s",
            "gw/direct calls/s",
            "direct p50/p95 ms",
            "gateway p50/p95 ms",
            "gw/direct p50",
        ],
        [
            [
                pair.rpc,
                str(pair.concurrency),
                f"{pair.direct.calls_per_second:,.0f}",
                f"{pair.gateway.calls_per_second:,.0f}",
                _common.ratio(pair.gateway.calls_per_second, pair.direct.calls_per_second),
                f"{pair.direct.p50_ms:.2f} / {pair.direct.p95_ms:.2f}",
                f"{pair.gateway.p50_ms:.2f} / {pair.gateway.p95_ms:.2f}",
                _common.ratio(pair.gateway.p50_ms, pair.direct.p50_ms),
            ]
            for pair in pairs
        ],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time GetRun, ListRuns and GetThroughput through a pyvoy gateway in front "
        "of three demo subsystems and directly against one of them, on loopback."
    )
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls before each")
    parser.add_argument(
        "--concurrency",
        type=_common.concurrency_option,
        default=(1, 16),
        help="comma-separated numbers of calls in flight (default 1,16)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="30 calls, 5 warm-up: proves it works, not a result"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup = 30, 5
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be at least 1 and --warmup not negative")
    return args


def benchmark(args: argparse.Namespace) -> int:
    print(f"# gateway overhead: {_common.machine_banner()}", flush=True)
    with _common.children() as group:
        gateway = group.start_gateway()
        endpoints = {
            sid: group.start_subsystem(sid, gateway.url, seed=seed).url
            for sid, seed in SUBSYSTEM_SEEDS.items()
        }
        pairs = _common.run_async(measure_all(gateway.url, endpoints, args))
        clean = _common.report_exits(group.stop_all())
    print(
        f"# pyvoy gateway + {len(endpoints)} demo subsystems (pyvoy), all on this machine; "
        f"direct = {DIRECT_SUBSYSTEM} only; {args.calls} timed calls after {args.warmup} "
        "warm-up per cell; connectrpc + pyqwest h2c clients, no compression"
    )
    print(results_table(pairs))
    print(
        f"# note: through the gateway ListRuns and GetThroughput ask all {len(endpoints)} "
        "subsystems and merge the answers; direct asks one. GetRun is routed to its owner.",
        flush=True,
    )
    return 0 if clean else _common.EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
