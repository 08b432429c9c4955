"""Fan-out ListRuns through the gateway against its floor (issue 12's fan-out goals).

A pyvoy gateway and K demo subsystems (each its own process under pyvoy, registered
through the real client) run on loopback; K grows in stages (default 1, 10, 50: the
subsystems of one stage stay for the next). At each stage, once all K are connected
and discovered, two calls are timed one at a time, back to back, in rounds:

  floor    the client itself asks all K subsystems for ListRuns (limit 50) at once
           and waits for every answer: what the gateway's fan-out cannot beat
  gateway  one ListRuns (limit 50) through the gateway, which asks the same K
           subsystems, merges their answers into one page and signs a cursor

Both use the same generated Connect clients over pyqwest h2c the gateway uses for
its own upstream calls. Printed per K: p50 and p95 of both, and gateway/floor p50
(median over the rounds, each round's ratio from its own pair of samples).

Run from the repository root:

    .venv/bin/python bench/fanout.py                  # K = 1, 10, 50; ~3 min
    .venv/bin/python bench/fanout.py --stages 1,5     # other stages
    .venv/bin/python bench/fanout.py --quick          # K = 1, 2; proves it works
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import _common
from _api import FlowWatchApi, wait_until_discovered, without_partial_failure

from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2, types_pb2

PAGE = 50
# Fan-out goals from issue 12, printed beside the numbers.
GOALS = {1: 2.0, 50: 1.3}


def list_request() -> run_service_pb2.ListRunsRequest:
    return run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=PAGE))


def floor_call(subsystems: Sequence[FlowWatchApi]) -> Callable[[], Awaitable[None]]:
    request = list_request()

    async def call() -> None:
        answers = await asyncio.gather(*(api.runs.list_runs(request) for api in subsystems))
        for api, answer in zip(subsystems, answers, strict=True):
            if len(answer.runs) != min(PAGE, answer.pagination.total_count):
                raise RuntimeError(f"ListRuns on {api.name}: {len(answer.runs)} runs")

    return call


def gateway_call(gateway: FlowWatchApi, total: int) -> Callable[[], Awaitable[None]]:
    request = list_request()

    async def call() -> None:
        answer = await gateway.runs.list_runs(request)
        if len(answer.runs) != min(PAGE, total) or not answer.pagination.next_cursor:
            raise RuntimeError(
                f"ListRuns via the gateway: {len(answer.runs)} runs, "
                f"cursor {answer.pagination.next_cursor!r}"
            )

    return without_partial_failure(gateway, "ListRuns", call)


@dataclass(frozen=True)
class Stage:
    subsystems: int
    floor: list[_common.Sample]
    gateway: list[_common.Sample]

    def ratios(self) -> list[float]:
        return [g.p50_ms / f.p50_ms for f, g in zip(self.floor, self.gateway, strict=True)]


async def measure_stage(
    gateway_url: str, endpoints: dict[str, str], args: argparse.Namespace
) -> Stage:
    gateway = FlowWatchApi("gateway", gateway_url)
    subsystems = [FlowWatchApi(sid, url) for sid, url in endpoints.items()]
    try:
        await wait_until_discovered(gateway, subsystems)
        total = sum([await api.run_total() for api in subsystems])
        paths = {"floor": floor_call(subsystems), "gateway": gateway_call(gateway, total)}
        timed: dict[str, list[_common.Sample]] = {"floor": [], "gateway": []}
        k = len(subsystems)
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer machine.
            order = ("floor", "gateway") if round_ % 2 == 0 else ("gateway", "floor")
            for path in order:
                sample = await _common.measure(
                    paths[path], calls=args.calls, concurrency=1, warmup=args.warmup
                )
                _common.progress(f"K={k} round {round_ + 1} {path}", sample)
                timed[path].append(sample)
        return Stage(k, timed["floor"], timed["gateway"])
    finally:
        for api in (gateway, *subsystems):
            await api.close()


def median_ms(samples: list[_common.Sample], percentile: str) -> float:
    values: list[float] = [getattr(sample, percentile) for sample in samples]
    return statistics.median(values)


def results_table(stages: list[Stage]) -> str:
    rows = []
    for stage in stages:
        goal = GOALS.get(stage.subsystems)
        ratio = statistics.median(stage.ratios())
        rows.append(
            [
                str(stage.subsystems),
                f"{median_ms(stage.floor, 'p50_ms'):.2f} / {median_ms(stage.floor, 'p95_ms'):.2f}",
                f"{median_ms(stage.gateway, 'p50_ms'):.2f} / "
                f"{median_ms(stage.gateway, 'p95_ms'):.2f}",
                f"{median_ms(stage.gateway, 'p50_ms') - median_ms(stage.floor, 'p50_ms'):+.2f}",
                f"{ratio:.2f}x",
                ", ".join(f"{r:.2f}" for r in stage.ratios()),
                "-" if goal is None else f"<= {goal:g}x",
                "" if goal is None else ("meets" if ratio <= goal else "MISSES"),
            ]
        )
    return _common.format_table(
        [
            "K",
            "floor p50/p95 ms",
            "gateway p50/p95 ms",
            "added p50 ms",
            "gw/floor p50",
            "per round",
            "goal",
            "",
        ],
        rows,
    )


def parse_stages(text: str) -> tuple[int, ...]:
    stages = _common.parse_concurrency(text)
    if list(stages) != sorted(set(stages)):
        raise argparse.ArgumentTypeError("stages must grow: e.g. 1,10,50")
    return stages


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time ListRuns (limit 50) through a pyvoy gateway fanning out to K demo "
        "subsystems against a client asking the same K subsystems itself, on loopback."
    )
    parser.add_argument(
        "--stages", type=parse_stages, default=(1, 10, 50), help="K per stage (1,10,50)"
    )
    parser.add_argument("--calls", type=int, default=200, help="timed calls per cell (200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before each (20)")
    parser.add_argument("--rounds", type=int, default=3, help="floor/gateway pairs per K (3)")
    parser.add_argument(
        "--quick", action="store_true", help="K = 1, 2; 20 calls, 1 round: proves it works"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.stages, args.calls, args.warmup, args.rounds = (1, 2), 20, 3, 1
    if args.calls < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1 and --warmup not negative")
    return args


def benchmark(args: argparse.Namespace) -> int:
    print(f"# fan-out: {_common.machine_banner()}", flush=True)
    stages: list[Stage] = []
    with _common.children() as group:
        gateway = group.start_gateway()
        started: dict[str, _common.Served] = {}
        for k in args.stages:
            new = [
                group.start_subsystem(f"s{i:03d}", gateway.url, seed=i + 1, wait=False)
                for i in range(len(started), k)
            ]
            for subsystem in new:
                _common.wait_ready(subsystem)
                started[subsystem.name] = subsystem
            _common.note(f"{k} subsystems serving; waiting for the gateway to discover them")
            endpoints = {sid: child.url for sid, child in started.items()}
            stages.append(_common.run_async(measure_stage(gateway.url, endpoints, args)))
        clean = _common.report_exits(group.stop_all())
    print(
        f"# pyvoy gateway + K demo subsystems (pyvoy), all on this machine; ListRuns limit "
        f"{PAGE}, one call at a time; {args.calls} timed calls after {args.warmup} warm-up "
        f"per cell, {args.rounds} rounds; connectrpc + pyqwest h2c clients, no compression"
    )
    print(results_table(stages))
    print(
        "# floor: the client asks all K subsystems at once itself (no merge); gw/floor p50 is "
        "the median of the rounds' ratios",
        flush=True,
    )
    return 0 if clean else _common.EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
