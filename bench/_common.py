"""Shared pieces of the benchmarks: child processes, timed call loops, result tables.

Benchmarks compare alternatives measured in one run on one machine, so every number
they print sits next to the number it is compared with. Children (gateway, demo
subsystems, each with an Envoy of its own) run in their own sessions: the terminal's
Ctrl-C reaches only the benchmark, which then stops them in order, and a process
group kill removes anything that hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import pyqwest

from flowwatch_gateway.exit_guard import install as install_exit_guard
from flowwatch_gateway.processes import Child, ChildGroup, child_env, free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

T = TypeVar("T")


# --- pure: statistics and tables --------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (fraction in [0, 1])."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Sample:
    """What one timed loop of calls measured."""

    calls: int
    concurrency: int
    elapsed_seconds: float
    latencies_seconds: tuple[float, ...]

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.elapsed_seconds if self.elapsed_seconds > 0 else math.inf

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.latencies_seconds), 0.50) * 1000.0

    @property
    def p95_ms(self) -> float:
        return percentile(sorted(self.latencies_seconds), 0.95) * 1000.0


def ratio(value: float, baseline: float) -> str:
    """value/baseline as '0.42x'; '-' when there is nothing to compare with."""
    if baseline <= 0 or math.isinf(baseline) or math.isinf(value):
        return "-"
    return f"{value / baseline:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, the table has {len(headers)} columns")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def parse_concurrency(text: str) -> tuple[int, ...]:
    """'1,64' -> (1, 64), for the --concurrency option."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"--concurrency takes comma-separated whole numbers such as 1,64, got {text!r}"
        ) from None
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"--concurrency needs levels of at least 1, got {text!r}")
    return levels


def concurrency_option(text: str) -> tuple[int, ...]:
    """parse_concurrency for argparse, which shows only ArgumentTypeError messages."""
    try:
        return parse_concurrency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- timing ---------------------------------------------------------------------------------


class BenchmarkInterrupted(Exception):
    """Ctrl-C or SIGTERM arrived while calls were being timed."""


# Set from the event loop's signal handler (see run_async). Timing loops check it
# between calls because cancelling a task does not reliably stop a connectrpc call:
# the client may turn the cancellation into an error or finish the call anyway.
_stop_requested = threading.Event()


async def _drive(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> Sample:
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and not _stop_requested.is_set():
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, calls)):
            group.create_task(worker())
    elapsed = time.perf_counter() - started
    if _stop_requested.is_set():
        raise BenchmarkInterrupted
    return Sample(calls, concurrency, elapsed, tuple(latencies))


async def measure(
    call: Callable[[], Awaitable[object]], *, calls: int, concurrency: int, warmup: int
) -> Sample:
    """Run `warmup` untimed calls, then exactly `calls` timed ones by `concurrency` workers.

    The warm-up opens connections (and fills caches) at the same concurrency, so the
    timed loop measures steady state rather than connection setup.
    """
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    if warmup > 0:
        await _drive(call, warmup, concurrency)
    return await _drive(call, calls, concurrency)


# --- the machine ----------------------------------------------------------------------------


def machine_banner() -> str:
    """When and where the numbers were taken, printed above every table."""
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("connectrpc", "pyqwest", "pyvoy", "httpx")
    )
    # Other work on the machine skews absolute numbers; the load average says how much.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, load {load}, "
        f"Python {platform.python_version()} ({platform.machine()}); {versions}"
    )


# --- clients --------------------------------------------------------------------------------


def h2c_transport() -> pyqwest.HTTPTransport:
    """pyqwest with HTTP/2 prior knowledge, as the gateway talks to subsystems.

    Wrap it in pyqwest.Client for connectrpc and `aclose()` it when done.
    """
    return pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2)


# --- child processes ------------------------------------------------------------------------


class Served(Child):
    """A `flowwatch-gateway` (or demo) child serving HTTP on a loopback port."""

    def __init__(self, name: str, module: str, cli_args: Sequence[str], port: int) -> None:
        command = [sys.executable, "-m", module, *cli_args]
        super().__init__(name, command, env=child_env(), cwd=ROOT)
        self.url = f"http://127.0.0.1:{port}"


class Children(ChildGroup):
    """The benchmark's children; stop_all() stops them latest started first."""

    def start_gateway(self, port: int | None = None) -> Served:
        """`flowwatch-gateway serve` under pyvoy on loopback, ready when /readyz says so."""
        port = port or free_port()
        args = ["serve", "--addr", f"127.0.0.1:{port}", "--server", "pyvoy"]
        child = self.start(Served("gateway", "flowwatch_gateway.cli", args, port))
        child.wait_http_ok(f"{child.url}/readyz", STARTUP_TIMEOUT_SECONDS)
        return child

    def start_subsystem(
        self,
        subsystem_id: str,
        gateway_url: str,
        *,
        seed: int,
        port: int | None = None,
        endpoint: str | None = None,
        wait: bool = True,
    ) -> Served:
        """A demo subsystem under pyvoy (HTTP/1.1 + h2c), ready when its API answers.

        Registration with `gateway_url` is left to the caller to check: with no gateway
        there, the subsystem keeps serving and retries in the background. `endpoint`
        registers another address for the gateway to call (default: its own). With
        `wait=False` the caller waits (`wait_ready`), so many can start at once.
        """
        port = port or free_port()
        args = [
            "subsystem",
            "--id",
            subsystem_id,
            "--port",
            str(port),
            "--gateway",
            gateway_url,
            "--seed",
            str(seed),
            "--log-level",
            "warning",
            # Long retry delays keep a gateway-less subsystem quiet during timing.
            "--min-backoff",
            "5m",
            "--max-backoff",
            "5m",
            *(("--endpoint", endpoint) if endpoint else ()),
        ]
        child = self.start(Served(subsystem_id, "flowwatch_gateway.demo", args, port))
        if wait:
            wait_ready(child)
        return child


def wait_ready(subsystem: Served) -> None:
    subsystem.wait_http_ok(f"{subsystem.url}/healthz", STARTUP_TIMEOUT_SECONDS)


@contextlib.contextmanager
def children() -> Iterator[Children]:
    """Children that are always gone afterwards; their logs are shown when setup or a run failed."""
    group = Children()
    try:
        yield group
    except Exception:
        print(group.logs(), file=sys.stderr)
        raise
    finally:
        # Ctrl-C or an error: stop gracefully first, then make sure nothing is left.
        try:
            report_exits(group.stop_all(STOP_TIMEOUT_SECONDS))
        finally:
            group.close()


def report_exits(statuses: dict[str, int]) -> bool:
    """Print children whose exit status was not 0; True when all exited cleanly."""
    unclean = {name: status for name, status in statuses.items() if status != 0}
    for name, status in unclean.items():
        print(f"warning: {name} exited with status {status}", file=sys.stderr)
    return not unclean


# --- running a benchmark --------------------------------------------------------------------


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with Ctrl-C/SIGTERM turned into KeyboardInterrupt once the loop is done.

    The signal stops the timing loops and cancels the work; whatever that surfaces as
    (CancelledError, a connectrpc CANCELED error, BenchmarkInterrupted) becomes one
    KeyboardInterrupt, so the caller's cleanup runs outside the loop.
    """
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def stop() -> None:
            _stop_requested.set()
            main.cancel()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop)
        return await work

    try:
        return asyncio.run(guarded())
    except BaseException:
        if _stop_requested.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_benchmark(benchmark: Callable[[], int]) -> int:
    """Run a benchmark and return its exit status; SIGTERM is handled like Ctrl-C.

    Children are started and stopped outside the event loop, so an interrupt during
    startup lands at once and the `children()` block still stops everything.
    """
    # pyqwest 0.12 can abort (exit 134) during interpreter finalization without it.
    install_exit_guard()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return benchmark()
    except KeyboardInterrupt:
        print("interrupted; child processes stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def note(text: str) -> None:
    """A status line on stderr; stdout carries only the results."""
    print(f"  {text}", file=sys.stderr, flush=True)


def progress(what: str, sample: Sample) -> None:
    """One line per finished measurement on stderr, so a long run shows it is alive."""
    print(f"  {what}: {sample.calls_per_second:,.0f} calls/s", file=sys.stderr, flush=True)
