"""A subsystem whose replies never end cannot make the gateway buffer them.

Behind a real gateway under pyvoy: a healthy demo subsystem and a hostile one
(tests/support/hostile.py: 200 with the right content type, then an endless body; for
streams a message prefix declaring 2 GiB, then endless bytes). Every leg (discovery
after registration, fan-out through the Envoy request leg, the routed decoding path,
streams, analytics, search) must cut the hostile reply off as it streams, fail for that
subsystem alone (resource_exhausted, the healthy data still answering), drop the call
so the hostile server stops sending, and give the memory back.

Memory is the gateway's process group (Envoy with the app inside it) VmRSS, against a
baseline taken once the healthy subsystem was served. The bound: a capped call holds
at most READ_MAX_BYTES (16 MiB) of reply in the client, at worst twice that while its
buffer grows, plus HTTP/2 flow-control windows; RSS_BOUND_MIB leaves room for
allocator slack above that, and is an order of magnitude below what a single uncapped
call took (the whole body, gigabytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyqwest
import pytest
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway.gen.flowwatch.v1 import stream_service_connect
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.processes import Child, free_port
from flowwatch_gateway.proxy.upstream import READ_MAX_BYTES
from tests.support.harness import ROOT, STARTUP_TIMEOUT, GatewayProcess, start_gateway
from tests.support.upstreams import start_demo_server, start_registrar, wait_until

RSS_BOUND_MIB = 150
# What the hostile server may have sent before a cut reached it: the cap, plus what
# was in flight (flow-control windows, socket buffers, Envoy's buffers until the
# request that made the call ends). Gigabytes without the cap.
SENT_BOUND = READ_MAX_BYTES + 64 * 1024 * 1024
ROUNDS = 8


def group_rss_mib(pgid: int) -> float:
    """VmRSS of every process in the group, in MiB (Linux /proc)."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return total_kib / 1024


@dataclass
class Stack:
    gateway: GatewayProcess
    hostile: Child
    baseline_mib: float

    def rss_growth_mib(self) -> float:
        return group_rss_mib(self.gateway.pid) - self.baseline_mib

    def cuts(self) -> list[tuple[str, int]]:
        found = []
        for line in self.hostile.logs().splitlines():
            if line.startswith("CUT "):
                _, path, sent = line.split()
                found.append((path, int(sent)))
        return found

    def wait_cut(self, rpc: str, count: int = 1) -> list[int]:
        """Bytes sent by the hostile server on each of the first `count` cut `rpc` calls."""

        def sent() -> list[int]:
            return [n for path, n in self.cuts() if path.endswith(rpc)]

        wait_until(lambda: len(sent()) >= count, 30, f"{count} cut {rpc} call(s)")
        return sent()

    def assert_bounded(self) -> None:
        growth = self.rss_growth_mib()
        assert growth < RSS_BOUND_MIB, f"gateway RSS grew by {growth:.0f} MiB"
        for path, sent in self.cuts():
            assert sent < SENT_BOUND, f"{path}: the hostile server sent {sent} bytes"


def post(url: str, rpc: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1"},
        timeout=30,
    )


def failures(response: httpx.Response) -> dict[str, str]:
    header = response.headers.get("flowwatch-partial-failure", "")
    return dict(part.split(": ", 1) for part in header.split(", ") if part)


def start_hostile() -> tuple[Child, str]:
    port = free_port()
    proc = Child(
        "hostile subsystem",
        [sys.executable, "-m", "tests.support.hostile", "--port", str(port)],
        cwd=ROOT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        proc.start().wait_http_ok(f"{endpoint}/healthz", STARTUP_TIMEOUT)
    except BaseException:
        proc.close()
        raise
    return proc, endpoint


def warm_up(url: str) -> None:
    """Every call the tests make, once, against the healthy subsystem alone."""
    for rpc, body in CALLS:
        assert post(url, rpc, body).status_code in (200, 404)
    asyncio.run(first_stats(url))


CALLS: list[tuple[str, dict[str, object]]] = [
    ("RunService/ListRuns", {"pagination": {"limit": 10}}),
    ("WorkflowService/ListSubsystems", {}),
    ("RunService/GetRun", {"runId": "nobody-run-1"}),
    ("AnalyticsService/GetThroughput", {}),
    ("SearchService/Search", {"query": "orders"}),
    ("RunService/ListRuns", {"foreignId": "order-1"}),
]


async def first_stats(url: str) -> stream.StatsSnapshot:
    """The first merged WatchStats snapshot the gateway sends (then the call is closed)."""
    transport = pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2)
    try:
        client = stream_service_connect.StreamServiceClient(
            url, protocol=ProtocolType.CONNECT, http_client=pyqwest.Client(transport)
        )
        request = stream.WatchStatsRequest(interval_seconds=1)
        async for snapshot in client.watch_stats(request, timeout_ms=30_000):
            return snapshot
        raise AssertionError("WatchStats ended without a snapshot")
    finally:
        await transport.aclose()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    processes: list[Child] = []
    with start_gateway(
        "--heartbeat", "1s", "--grace-period", "30s", "--upstream-timeout", "20s"
    ) as gateway:
        try:
            server, healthy = start_demo_server("orders", 1, datetime.now(UTC))
            processes.append(server)
            processes.append(start_registrar(gateway.url, "orders", healthy))
            wait_until(
                lambda: "orders" in post(gateway.url, "WorkflowService/ListSubsystems", {}).text,
                30,
                "orders registered",
            )
            warm_up(gateway.url)
            baseline = group_rss_mib(gateway.pid)
            hostile, endpoint = start_hostile()
            processes.append(hostile)
            processes.append(start_registrar(gateway.url, "hostile", endpoint))
            yield Stack(gateway, hostile, baseline)
            assert gateway.stop() == 0
        finally:
            for proc in processes:
                proc.close()


def test_discovery_after_registration_is_cut_off(stack: Stack) -> None:
    # No UI call at all: the gateway's own probes and discovery meet the hostile replies.
    stack.wait_cut("WorkflowService/GetCapabilities")
    stack.wait_cut("WorkflowService/ListWorkflows")
    stack.assert_bounded()


def test_list_runs_answers_with_the_healthy_rows_and_names_the_hostile_one(stack: Stack) -> None:
    response = post(stack.gateway.url, "RunService/ListRuns", {"pagination": {"limit": 10}})
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert len(runs) == 10 and {run["subsystemId"] for run in runs} == {"orders"}
    assert failures(response) == {"hostile": "resource_exhausted"}
    stack.assert_bounded()


def test_list_subsystems_lists_both(stack: Stack) -> None:
    response = post(stack.gateway.url, "WorkflowService/ListSubsystems", {})
    assert response.status_code == 200, response.text
    listed = {s["subsystem"]["id"] for s in response.json()["subsystems"]}
    assert listed == {"orders", "hostile"}
    stack.wait_cut("WorkflowService/ListSubsystems")  # the hostile one was asked, and cut
    stack.assert_bounded()


def test_a_routed_get_run_on_the_decoding_path_names_the_hostile_one(stack: Stack) -> None:
    # Nobody owns this run: every subsystem is asked; the hostile one may own it, so
    # the answer is not not_found but names it.
    response = post(stack.gateway.url, "RunService/GetRun", {"runId": "nobody-run-1"})
    assert response.status_code != 200
    assert "hostile (resource_exhausted)" in response.json()["message"], response.text
    before = len(stack.wait_cut("RunService/GetRun"))
    found = post(stack.gateway.url, "RunService/GetRun", {"runId": "orders-run-00011"})
    assert found.status_code == 200, found.text
    assert found.json()["run"]["id"] == "orders-run-00011"
    assert len(stack.cuts()) >= before
    stack.assert_bounded()


def test_a_stream_message_declaring_2_gib_is_cut_at_its_prefix(stack: Stack) -> None:
    snapshot = asyncio.run(first_stats(stack.gateway.url))
    assert snapshot.HasField("timestamp")  # merged from the healthy subsystem
    stack.wait_cut("StreamService/WatchStats")
    stack.assert_bounded()


def test_watch_runs_cuts_the_hostile_stream_and_stays_open(stack: Stack) -> None:
    async def watch() -> None:
        transport = pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2)
        client = stream_service_connect.StreamServiceClient(
            stack.gateway.url, protocol=ProtocolType.CONNECT, http_client=pyqwest.Client(transport)
        )

        async def read() -> None:
            async for _ in client.watch_runs(stream.WatchRunsRequest(), timeout_ms=60_000):
                pass

        reader = asyncio.ensure_future(read())
        try:
            deadline = time.monotonic() + 30
            while not any(path.endswith("WatchRuns") for path, _ in stack.cuts()):
                assert time.monotonic() < deadline, "the hostile WatchRuns was never cut"
                assert not reader.done(), "the stream ended with the hostile one"
                await asyncio.sleep(0.1)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectError):
                await reader
            await transport.aclose()

    asyncio.run(watch())
    stack.assert_bounded()


def test_analytics_answers_with_the_healthy_data(stack: Stack) -> None:
    response = post(stack.gateway.url, "AnalyticsService/GetThroughput", {})
    assert response.status_code == 200, response.text
    assert failures(response) == {"hostile": "resource_exhausted"}
    stack.assert_bounded()


def test_search_answers_with_the_healthy_data(stack: Stack) -> None:
    response = post(stack.gateway.url, "SearchService/Search", {"query": "orders"})
    assert response.status_code == 200, response.text
    assert failures(response).get("hostile") == "resource_exhausted"
    by_foreign_id = post(stack.gateway.url, "RunService/ListRuns", {"foreignId": "order-1"})
    assert by_foreign_id.status_code == 200, by_foreign_id.text
    assert failures(by_foreign_id) == {"hostile": "resource_exhausted"}
    stack.assert_bounded()


def test_memory_stays_bounded_over_calls_in_a_row(stack: Stack) -> None:
    before = len(stack.wait_cut("RunService/ListRuns"))
    for _ in range(ROUNDS):
        response = post(stack.gateway.url, "RunService/ListRuns", {"pagination": {"limit": 25}})
        assert response.status_code == 200, response.text
        assert failures(response) == {"hostile": "resource_exhausted"}
        stack.assert_bounded()
    stack.wait_cut("RunService/ListRuns", before + ROUNDS)
    deadline = time.monotonic() + 10
    while stack.rss_growth_mib() >= RSS_BOUND_MIB and time.monotonic() < deadline:
        time.sleep(0.2)
    stack.assert_bounded()
    assert os.path.exists(f"/proc/{stack.gateway.pid}")
