"""Scale: N subsystems holding Register streams on one gateway (issue 8's goals).

A pyvoy gateway (heartbeat 1 s, loopback) gets N Register streams (default 1,000)
from a few client processes. Each client process runs `connect_to_gateway` for its
share of the subsystems over one shared HTTP/2 pyqwest client, with fixed workflows,
capabilities and metadata, so no client ever asks a local API. Endpoints:

  unreachable  every registration names a closed loopback port: the gateway's
               probes and discovery keep failing and retrying with backoff
  demo         registrations point at a few demo subsystem processes (several
               registrations share one endpoint); the demos themselves register
               nowhere, so the gateway lists exactly N

Measured, each next to the same measurement with 0 registered:
  - time from "go" until every client saw its RegisterResponse(accepted);
  - the gateway's CPU (% of one core; utime+stime of its whole process tree from
    /proc, over an idle window after all registered) and its RSS per stream
    ((VmRSS after - before) / N, summed over the tree);
  - UI call latency p50/p95: ListSubsystems, ListRuns limit 25, GetRun (demo mode).

The client processes' own CPU is printed too: a client near 100% of a core would
make the gateway look slower than it is.

Run from the repository root:

    .venv/bin/python bench/scale.py                          # 1,000 streams, unreachable
    .venv/bin/python bench/scale.py --endpoints demo         # 1,000 streams, 3 demo subsystems
    .venv/bin/python bench/scale.py --quick                  # 50 streams, short windows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import _common
import pyqwest
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_connect,
    run_service_pb2,
    types_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)
from flowwatch_gateway.processes import Child, child_env, free_port
from flowwatch_gateway.proxy.merge.catalog import META_STATE

HEARTBEAT = "1s"
LIST_LIMIT = 25
CALL_TIMEOUT_MS = 60_000
WORKFLOWS_PER_SUBSYSTEM = 3
# Goals from issue 8, printed beside the numbers.
GOAL_ACCEPT_SECONDS = 10.0
GOAL_CPU_PERCENT = 20.0
GOAL_RSS_KB_PER_STREAM = 120.0
ACCEPT_TIMEOUT_SECONDS = 180.0
WORKER_READY_TIMEOUT_SECONDS = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# --- the gateway's process tree in /proc --------------------------------------------------


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command name may contain spaces and parentheses: split after the last ')'.
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (the supervisor, Envoy, whatever Envoy started)."""
    tree = _children_by_parent()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes, in seconds (gone processes count 0)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLK_TCK


def rss_kb(pids: Sequence[int]) -> int:
    """VmRSS summed over these processes, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


async def cpu_percent(pids: Callable[[], Sequence[int]], seconds: float) -> float:
    """% of one core the processes used over the next `seconds` of wall time."""
    before_pids = pids()
    before, started = cpu_seconds(before_pids), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = cpu_seconds(before_pids), time.monotonic() - started
    return 100.0 * (after - before) / elapsed


# --- the client processes -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What one client process registers: ids [first, first + count), endpoints by turns."""

    gateway_url: str
    first: int
    count: int
    endpoints: list[str]

    def subsystem_id(self, index: int) -> str:
        return f"scale-{index:05d}"


def announced_workflows(subsystem_id: str) -> list[types_pb2.WorkflowDefinition]:
    return [
        types_pb2.WorkflowDefinition(
            id=f"{subsystem_id}-wf{k}", name=f"Scale workflow {k}", engine="bench", version="1"
        )
        for k in range(WORKFLOWS_PER_SUBSYSTEM)
    ]


async def run_worker(spec: WorkerSpec) -> None:
    """Register spec.count subsystems when SIGUSR1 arrives; hold them until SIGTERM.

    Prints `ready` once set up, and `accepted <monotonic time>` when all its
    subsystems are accepted (CLOCK_MONOTONIC is shared by every process on the host).
    """
    # Imported here: the benchmark's own process needs none of the SDK.
    from flowwatch_gateway import (
        Backoff,
        ClientOptions,
        ClientStatus,
        ConnectionState,
        connect_to_gateway,
    )

    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, go.set)
    for sig in _common.STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # One HTTP/2 connection carries every Register stream of this process, so the
    # client side costs one connection, not N; the local client is never used
    # (everything is announced) but is shared so no attempt builds a transport.
    transport = pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2)
    local_transport = pyqwest.HTTPTransport()
    http, local = pyqwest.Client(transport), pyqwest.Client(local_transport)
    capabilities = types_pb2.Capabilities(streaming=True, analytics=True)
    accepted: set[str] = set()
    all_accepted = asyncio.Event()

    def watcher(subsystem_id: str) -> Callable[[ClientStatus], None]:
        def changed(status: ClientStatus) -> None:
            if status.state is ConnectionState.CONNECTED:
                accepted.add(subsystem_id)
                if len(accepted) == spec.count and not all_accepted.is_set():
                    all_accepted.set()
                    print(f"accepted {time.monotonic():.6f}", flush=True)

        return changed

    print("ready", flush=True)
    go_or_stop = [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(go_or_stop, return_when=asyncio.FIRST_COMPLETED)
    tasks = []
    if go.is_set():
        for index in range(spec.first, spec.first + spec.count):
            sid = spec.subsystem_id(index)
            options = ClientOptions(
                gateway_url=spec.gateway_url,
                subsystem_id=sid,
                local_endpoint=spec.endpoints[index % len(spec.endpoints)],
                name=sid,
                workflows=announced_workflows(sid),
                capabilities=capabilities,
                metadata={"bench": "scale"},
                http_client=http,
                local_http_client=local,
                backoff=Backoff(initial=1.0, maximum=5.0),
                on_state_change=watcher(sid),
                register_timeout=30.0,
            )
            tasks.append(asyncio.create_task(connect_to_gateway(options)))
        await stop.wait()
    for task in (*tasks, *go_or_stop):
        task.cancel()
    # Cancelled clients half-close their streams, so the gateway sees clean ends.
    await asyncio.gather(*tasks, *go_or_stop, return_exceptions=True)
    await transport.aclose()
    await local_transport.aclose()


class Worker(Child):
    """One client process running `run_worker`."""

    def __init__(self, name: str, spec: WorkerSpec) -> None:
        script = str(Path(__file__).resolve())
        command = [sys.executable, script, "--worker", json.dumps(spec.__dict__)]
        super().__init__(name, command, env=child_env(), cwd=_common.ROOT)
        self.spec = spec

    def is_ready(self) -> bool:
        return "ready" in self.logs().split()

    def accepted_at(self) -> float | None:
        for line in self.logs().splitlines():
            if line.startswith("accepted "):
                return float(line.split()[1])
        return None


# --- UI calls ---------------------------------------------------------------------------------


class Ui:
    """The dashboard's calls to the gateway: Connect over pyqwest h2c."""

    def __init__(self, url: str) -> None:
        self._transport = _common.h2c_transport()
        http = pyqwest.Client(self._transport)
        self.workflows = workflow_service_connect.WorkflowServiceClient(
            url, http_client=http, send_compression=None, timeout_ms=CALL_TIMEOUT_MS
        )
        self.runs = run_service_connect.RunServiceClient(
            url, http_client=http, send_compression=None, timeout_ms=CALL_TIMEOUT_MS
        )

    async def close(self) -> None:
        await self._transport.aclose()

    async def connected_count(self) -> int:
        answer = await self.workflows.list_subsystems(workflow_service_pb2.ListSubsystemsRequest())
        return sum(
            1 for s in answer.subsystems if s.subsystem.metadata.get(META_STATE) == "connected"
        )

    async def some_run_id(self) -> str | None:
        answer = await self.runs.list_runs(
            run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=1))
        )
        return answer.runs[0].id if answer.runs else None


async def timed(
    call: Callable[[], Awaitable[object]], calls: int, answers: set[str]
) -> list[float]:
    """Latencies (s) of `calls` sequential calls after one untimed warm-up call.

    An error answer is timed like any other (with unreachable endpoints ListRuns is
    answered unavailable); `answers` collects what came back, for the report.
    """

    async def one() -> None:
        try:
            await call()
        except ConnectError as exc:
            answers.add(exc.code.name.lower())
        else:
            answers.add("ok")

    await one()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await one()
        latencies.append(time.perf_counter() - started)
    return sorted(latencies)


@dataclass
class Latency:
    seconds: list[float]
    answers: set[str]


async def ui_latencies(ui: Ui, run_id: str | None, calls: int) -> dict[str, Latency]:
    list_subsystems = workflow_service_pb2.ListSubsystemsRequest()
    list_runs = run_service_pb2.ListRunsRequest(
        pagination=types_pb2.PaginationRequest(limit=LIST_LIMIT)
    )
    rpcs: dict[str, Callable[[], Awaitable[object]]] = {
        "ListSubsystems": lambda: ui.workflows.list_subsystems(list_subsystems),
        f"ListRuns {LIST_LIMIT}": lambda: ui.runs.list_runs(list_runs),
    }
    if run_id is not None:
        get_run = run_service_pb2.GetRunRequest(run_id=run_id)
        rpcs["GetRun"] = lambda: ui.runs.get_run(get_run)
    result = {}
    for rpc, call in rpcs.items():
        answers: set[str] = set()
        result[rpc] = Latency(await timed(call, calls, answers), answers)
    return result


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Phase:
    """What was measured with some number of subsystems registered."""

    registered: int
    cpu_percent: float
    rss_kb: int
    latencies: dict[str, Latency]


@dataclass
class Result:
    reference: Phase
    loaded: Phase
    accept_seconds: float
    client_cpu_percent: list[float]
    connected_seen: int


async def measure(
    gateway: Child, ui: Ui, workers: list[Worker], args: argparse.Namespace, run_id: str | None
) -> Result:
    def tree() -> list[int]:
        return process_tree(gateway.pid)

    _common.note(f"reference: 0 registered, {args.idle:g}s idle window")
    await asyncio.sleep(args.settle)
    ref_cpu = await cpu_percent(tree, args.idle)
    ref_latencies = await ui_latencies(ui, run_id, args.calls)
    ref_rss = rss_kb(tree())

    _common.note(f"registering {args.subsystems} subsystems from {len(workers)} process(es)")
    go = time.monotonic()
    for worker in workers:
        os.kill(worker.pid, signal.SIGUSR1)
    deadline = go + ACCEPT_TIMEOUT_SECONDS
    while any(w.accepted_at() is None for w in workers):
        if time.monotonic() > deadline or any(not w.running for w in workers):
            raise RuntimeError("not every subsystem was accepted in time:\n" + workers[0].logs())
        await asyncio.sleep(0.05)
    accept_seconds = max(w.accepted_at() or 0.0 for w in workers) - go
    _common.note(f"all accepted after {accept_seconds:.2f}s; settling {args.settle:g}s")

    await asyncio.sleep(args.settle)
    client_pids = [process_tree(w.pid) for w in workers]
    client_before = [cpu_seconds(p) for p in client_pids]
    started = time.monotonic()
    loaded_cpu = await cpu_percent(tree, args.idle)
    elapsed = time.monotonic() - started
    client_cpu = [
        100.0 * (cpu_seconds(p) - before) / elapsed
        for p, before in zip(client_pids, client_before, strict=True)
    ]
    loaded_rss = rss_kb(tree())
    connected = await ui.connected_count()
    _common.note(f"{connected} connected; timing UI calls")
    if run_id is not None:
        # The run-owner cache learns owners from list answers, as the UI's list page does.
        await ui.some_run_id()
    loaded_latencies = await ui_latencies(ui, run_id, args.calls)
    return Result(
        reference=Phase(0, ref_cpu, ref_rss, ref_latencies),
        loaded=Phase(args.subsystems, loaded_cpu, loaded_rss, loaded_latencies),
        accept_seconds=accept_seconds,
        client_cpu_percent=client_cpu,
        connected_seen=connected,
    )


def p(values: list[float], fraction: float) -> float:
    return _common.percentile(values, fraction) * 1000.0


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def report(result: Result, args: argparse.Namespace) -> str:
    ref, loaded = result.reference, result.loaded
    n = loaded.registered
    rss_per_stream = (loaded.rss_kb - ref.rss_kb) / n
    rows = [
        [
            "all accepted (s)",
            "-",
            f"{result.accept_seconds:.2f}",
            "-",
            f"<= {GOAL_ACCEPT_SECONDS:g}",
            verdict(result.accept_seconds <= GOAL_ACCEPT_SECONDS),
        ],
        [
            "gateway CPU idle (% of a core)",
            f"{ref.cpu_percent:.1f}",
            f"{loaded.cpu_percent:.1f}",
            _common.ratio(loaded.cpu_percent, ref.cpu_percent),
            f"<= {GOAL_CPU_PERCENT:g}",
            verdict(loaded.cpu_percent <= GOAL_CPU_PERCENT),
        ],
        [
            "gateway RSS (MiB)",
            f"{ref.rss_kb / 1024:.1f}",
            f"{loaded.rss_kb / 1024:.1f}",
            _common.ratio(loaded.rss_kb, ref.rss_kb),
            "-",
            "",
        ],
        [
            "RSS per stream (KiB)",
            "-",
            f"{rss_per_stream:.1f}",
            "-",
            f"<= {GOAL_RSS_KB_PER_STREAM:g}",
            verdict(rss_per_stream <= GOAL_RSS_KB_PER_STREAM),
        ],
    ]
    answered = []
    for rpc, latency in loaded.latencies.items():
        base, timed_ = ref.latencies[rpc].seconds, latency.seconds
        rows.append(
            [
                f"{rpc} p50 / p95 (ms)",
                f"{p(base, 0.5):.1f} / {p(base, 0.95):.1f}",
                f"{p(timed_, 0.5):.1f} / {p(timed_, 0.95):.1f}",
                _common.ratio(p(timed_, 0.5), p(base, 0.5)),
                "-",
                "",
            ]
        )
        answered.append(
            f"{rpc} {'/'.join(sorted(ref.latencies[rpc].answers))} -> "
            f"{'/'.join(sorted(latency.answers))}"
        )
    table = _common.format_table(
        ["measure", "0 registered", f"{n} registered", "ratio", "goal", ""], rows
    )
    clients = ", ".join(f"{c:.0f}%" for c in result.client_cpu_percent)
    notes = [
        f"# {n} Register streams, heartbeat {HEARTBEAT}, endpoints {args.endpoints}"
        + (f" ({args.demo_subsystems} demo subsystems)" if args.endpoints == "demo" else "")
        + f"; idle window {args.idle:g}s after {args.settle:g}s settling; "
        f"{args.calls} sequential calls per latency cell",
        f"# client processes' CPU in the idle window: {clients} of a core each; "
        f"{result.connected_seen} listed connected by ListSubsystems",
    ]
    notes.append(f"# answers (0 registered -> {n} registered): " + "; ".join(answered))
    return "\n".join([table, *notes])


def benchmark(args: argparse.Namespace) -> int:
    print(f"# scale: {_common.machine_banner()}", flush=True)
    with _common.children() as group:
        port = free_port()
        gateway = group.start(
            _common.Served(
                "gateway",
                "flowwatch_gateway.cli",
                [
                    "serve",
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--server",
                    "pyvoy",
                    "--heartbeat",
                    HEARTBEAT,
                ],
                port,
            )
        )
        gateway.wait_http_ok(f"{gateway.url}/readyz", _common.STARTUP_TIMEOUT_SECONDS)
        if args.endpoints == "demo":
            # The demos register with a gateway that is not there (and retry every 5
            # minutes), so only the benchmark's N registrations reach the real one.
            nowhere = f"http://127.0.0.1:{free_port()}"
            endpoints = [
                group.start_subsystem(f"demo-{k}", nowhere, seed=k + 1).url
                for k in range(args.demo_subsystems)
            ]
        else:
            # Closed ports: free a moment ago, and nothing here listens on them.
            endpoints = [f"http://127.0.0.1:{free_port()}" for _ in range(args.subsystems)]
        share = -(-args.subsystems // args.clients)
        workers = []
        for k in range(args.clients):
            first = k * share
            count = min(share, args.subsystems - first)
            if count > 0:
                spec = WorkerSpec(gateway.url, first, count, endpoints)
                workers.append(group.start(Worker(f"clients-{k}", spec)))
        for worker in workers:
            worker.wait_for(worker.is_ready, WORKER_READY_TIMEOUT_SECONDS, "ready")

        async def run() -> Result:
            ui = Ui(gateway.url)
            try:
                run_id = None
                if args.endpoints == "demo":
                    direct = Ui(endpoints[0])
                    try:
                        run_id = await direct.some_run_id()
                    finally:
                        await direct.close()
                return await measure(gateway, ui, workers, args, run_id)
            finally:
                await ui.close()

        result = _common.run_async(run())
        clean = _common.report_exits(group.stop_all())
    print(report(result, args), flush=True)
    return 0 if clean else _common.EXIT_FAILED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Register N subsystems with a pyvoy gateway (heartbeat 1s, loopback) and "
        "report time to all accepted, idle CPU, RSS per stream and UI call latency."
    )
    parser.add_argument("--subsystems", type=int, default=1000, help="Register streams (1000)")
    parser.add_argument(
        "--endpoints",
        choices=("unreachable", "demo"),
        default="unreachable",
        help="closed loopback ports, or a few demo subsystems shared by all registrations",
    )
    parser.add_argument("--demo-subsystems", type=int, default=3, help="for --endpoints demo")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--idle", type=float, default=15.0, help="CPU window in seconds (15)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait before it (5)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per UI rpc (20)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="50 subsystems, 2 s windows, 3 calls: proves it works, not a result",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.subsystems, args.idle, args.settle, args.calls = 50, 2.0, 1.0, 3
    if args.subsystems < 1 or args.clients < 1 or args.demo_subsystems < 1 or args.calls < 1:
        parser.error("--subsystems, --clients, --demo-subsystems and --calls must be at least 1")
    if args.idle <= 0 or args.settle < 0:
        parser.error("--idle must be positive and --settle not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        asyncio.run(run_worker(WorkerSpec(**json.loads(args.worker))))
        return 0
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
