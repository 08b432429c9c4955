#!/usr/bin/env python3
"""Gateway replicas on Redis behind Envoy: UI calls through the balancer, 1-3 replicas.

For 1, 2 and 3 replicas (each time a fresh redis-server, fresh replicas sharing it
with one cursor key, Envoy in front: h2c to the replicas, round robin, health checks
on /readyz), three demo subsystems register *through the balancer*. A UI-like client
(Connect JSON over HTTP/1.1, as the browser UI) then calls through the balancer:

- `ListSubsystems`: answered from the registry view of whichever replica gets it;
- `ListRuns` limit 25: fanned out by that replica to all three subsystems.

Every answer is checked (all three subsystems connected; 25 runs, no partial
failure). Finally, with 3 replicas, the replica holding the most Register streams is
SIGKILLed and the time until every one of its subsystems has registered again on a
survivor and is listed as connected through the balancer is reported.

On one machine the replicas share its cores, so more replicas do not mean more
capacity here; the numbers show what sharing the registry costs per call.

    .venv/bin/python bench/replicas.py            # ~1.5 min
    .venv/bin/python bench/replicas.py --quick    # seconds; proves it works, not a result
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import _common
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test harness starts gateways, Envoy and Redis

from flowwatch_gateway.processes import free_port  # noqa: E402
from tests.support.balancer import LoadBalancer  # noqa: E402
from tests.support.harness import (  # noqa: E402
    GatewayProcess,
    start_gateway,
    start_subsystem,
    subsystem_states,
)
from tests.support.redis_server import RedisServer  # noqa: E402

SUBSYSTEMS = ("orders", "payments", "shipping")
CURSOR_KEY = "bench-replicas-cursor-key"
HEARTBEAT = "1s"
SETTLE_TIMEOUT_S = 60.0


class Stack:
    """Redis, N replicas, Envoy and the subsystems, all stopped on exit."""

    def __init__(self, replicas: int, workdir: Path) -> None:
        self.replicas = replicas
        self.workdir = workdir
        self.gateways: list[GatewayProcess] = []
        self.balancer: LoadBalancer | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[LoadBalancer]:
        with contextlib.ExitStack() as stack:
            redis = stack.enter_context(RedisServer())
            redis.start_ready()
            ports = [free_port() for _ in range(self.replicas)]
            for port in ports:
                args = ["--redis-url", redis.url, "--cursor-key", CURSOR_KEY]
                args += ["--heartbeat", HEARTBEAT, "--log-level", "info"]
                gateway = start_gateway(*args, port=port, wait=False)
                self.gateways.append(stack.enter_context(gateway))
            for gateway in self.gateways:
                gateway.wait_ready()
            balancer = stack.enter_context(
                LoadBalancer(ports, health_interval=0.5, workdir=self.workdir)
            )
            balancer.start()
            balancer.wait_healthy()
            self.balancer = balancer
            subsystems = [
                stack.enter_context(
                    start_subsystem(
                        balancer.url,
                        subsystem_id,
                        "--seed",
                        str(seed),
                        "--min-backoff",
                        "100ms",
                        "--max-backoff",
                        "1s",
                        wait=False,
                    )
                )
                for seed, subsystem_id in enumerate(SUBSYSTEMS, start=1)
            ]
            for subsystem in subsystems:
                subsystem.wait_ready()
            wait_until(lambda: all_listed(balancer.url, 2 * self.replicas), "all registered")
            yield balancer

    def holders(self) -> dict[str, GatewayProcess]:
        """subsystem id -> replica whose log shows its latest accepted registration."""
        latest: dict[str, tuple[str, GatewayProcess]] = {}
        for gateway in self.gateways:
            for line in gateway.logs().splitlines():
                for subsystem_id in SUBSYSTEMS:
                    if f"subsystem registered: id={subsystem_id} " in line:
                        stamp = line[:23]  # asctime
                        if subsystem_id not in latest or stamp >= latest[subsystem_id][0]:
                            latest[subsystem_id] = (stamp, gateway)
        return {key: gateway for key, (_, gateway) in latest.items()}


def all_listed(url: str, calls: int) -> bool:
    """`calls` ListSubsystems in a row (so every replica answers) list all as connected."""
    try:
        return all(
            subsystem_states(url) == dict.fromkeys(SUBSYSTEMS, "connected") for _ in range(calls)
        )
    except httpx.HTTPError:
        return False


def wait_until(check: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            raise RuntimeError(f"not within {SETTLE_TIMEOUT_S:g}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def ui_call(
    client: httpx.AsyncClient, url: str, rpc: str, body: Mapping[str, object], check: str
) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        response = await client.post(
            f"{url}/flowwatch.v1.{rpc}", json=body, headers={"Connect-Protocol-Version": "1"}
        )
        if response.status_code != 200 or "flowwatch-partial-failure" in response.headers:
            raise RuntimeError(f"{rpc}: {response.status_code} {response.text[:200]}")
        answer = response.json()
        if check == "subsystems" and len(answer.get("subsystems", [])) != len(SUBSYSTEMS):
            raise RuntimeError(f"ListSubsystems listed {answer}")
        if check == "runs" and len(answer.get("runs", [])) != 25:
            raise RuntimeError("ListRuns did not return 25 runs")

    return call


async def measure_ui(url: str, args: argparse.Namespace) -> list[_common.Sample]:
    limits = httpx.Limits(max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        samples = []
        cells: tuple[tuple[str, Mapping[str, object], str], ...] = (
            ("WorkflowService/ListSubsystems", {}, "subsystems"),
            ("RunService/ListRuns", {"pagination": {"limit": 25}}, "runs"),
        )
        for rpc, body, check in cells:
            sample = await _common.measure(
                ui_call(client, url, rpc, body, check),
                calls=args.calls,
                concurrency=args.concurrency,
                warmup=args.warmup,
            )
            _common.progress(rpc, sample)
            samples.append(sample)
        return samples


def kill_and_recover(stack: Stack, balancer: LoadBalancer) -> tuple[int, float]:
    """SIGKILL the busiest replica; seconds until its subsystems are back everywhere."""
    holders = stack.holders()
    victim = max(stack.gateways, key=lambda g: sum(h is g for h in holders.values()))
    moved = [key for key, gateway in holders.items() if gateway is victim]
    victim.kill()
    survivors = 2 * (len(stack.gateways) - 1)

    def back() -> bool:
        now = stack.holders()
        return all(now.get(key) is not victim for key in moved) and all_listed(
            balancer.url, survivors
        )

    return len(moved), wait_until(back, "killed replica's subsystems back")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--calls", type=int, default=600, help="timed calls per cell")
    parser.add_argument("--warmup", type=int, default=60, help="untimed calls per cell first")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent UI callers")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to measure")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup = 20, 5
    args.replica_counts = _common.parse_concurrency(args.replicas)
    return args


def benchmark(args: argparse.Namespace) -> int:
    print(_common.machine_banner())
    rows = []
    recovery: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.replica_counts:
            _common.note(f"{count} replica(s): starting redis, replicas, envoy, subsystems")
            stack = Stack(count, Path(tmp))
            with _common.children(), stack.running() as balancer:
                listing, runs = _common.run_async(measure_ui(balancer.url, args))
                rows.append(
                    [
                        str(count),
                        f"{listing.calls_per_second:,.0f}",
                        f"{listing.p50_ms:.1f}",
                        f"{runs.calls_per_second:,.0f}",
                        f"{runs.p50_ms:.1f}",
                    ]
                )
                if count == max(args.replica_counts) and count > 1:
                    recovery = kill_and_recover(stack, balancer)
    headers = ["replicas", "ListSubsystems/s", "p50 ms", "ListRuns(25)/s", "p50 ms"]
    print(f"UI calls through Envoy, Connect JSON over HTTP/1.1, concurrency {args.concurrency}")
    print(_common.format_table(headers, rows))
    if recovery is not None:
        moved, seconds = recovery
        print(
            f"SIGKILL of the replica holding {moved} of {len(SUBSYSTEMS)} streams: all back "
            f"(re-registered on a survivor, listed connected through the balancer) in "
            f"{seconds:.1f} s (heartbeat {HEARTBEAT}, client backoff 100ms-1s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
