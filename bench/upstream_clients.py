"""Upstream-leg clients: small unary calls to one demo subsystem, four ways, in one run.

The gateway calls subsystems with connectrpc's generated clients over pyqwest (h2c,
no request compression). This benchmark shows what that choice buys against the
obvious alternatives, measured side by side on the same subsystem at the same time:

  (a) connectrpc + pyqwest h2c, compression off   (what the gateway uses)
  (b) connectrpc + pyqwest h2c, default gzip request compression
  (c) httpx.AsyncClient HTTP/1.1 posting binary protobuf (Connect unary)
  (d) httpx.AsyncClient HTTP/2 (h2c prior knowledge), same requests

Run from the repository root:

    .venv/bin/python bench/upstream_clients.py            # full run
    .venv/bin/python bench/upstream_clients.py --quick    # seconds, for a smoke check
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import _common
import httpx
import pyqwest
from connectrpc.compression.gzip import GzipCompression
from connectrpc.protocol import ProtocolType
from google.protobuf.message import Message

from flowwatch_gateway.gen.flowwatch.v1 import (
    run_service_connect,
    run_service_pb2,
    types_pb2,
    workflow_service_connect,
    workflow_service_pb2,
)
from flowwatch_gateway.processes import free_port

M = TypeVar("M", bound=Message)

RUN_SERVICE = "/flowwatch.v1.RunService"
WORKFLOW_SERVICE = "/flowwatch.v1.WorkflowService"
CALL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class UpstreamClient:
    """One way of making the two calls; both check the answer so a broken path cannot pass."""

    label: str
    get_run: Callable[[str], Awaitable[types_pb2.Run]]
    get_capabilities: Callable[[], Awaitable[types_pb2.Capabilities]]
    close: Callable[[], Awaitable[None]]


def connect_client(label: str, endpoint: str, *, compress: bool) -> UpstreamClient:
    """connectrpc's generated clients over one pyqwest h2c client."""
    transport = _common.h2c_transport()
    http = pyqwest.Client(transport)
    # GzipCompression is what the generated clients send by default.
    compression = GzipCompression() if compress else None
    runs = run_service_connect.RunServiceClient(
        endpoint, http_client=http, protocol=ProtocolType.CONNECT, send_compression=compression
    )
    workflows = workflow_service_connect.WorkflowServiceClient(
        endpoint, http_client=http, protocol=ProtocolType.CONNECT, send_compression=compression
    )
    timeout_ms = int(CALL_TIMEOUT_SECONDS * 1000)

    async def get_run(run_id: str) -> types_pb2.Run:
        answer = await runs.get_run(
            run_service_pb2.GetRunRequest(run_id=run_id), timeout_ms=timeout_ms
        )
        return answer.run

    async def get_capabilities() -> types_pb2.Capabilities:
        answer = await workflows.get_capabilities(
            workflow_service_pb2.GetCapabilitiesRequest(), timeout_ms=timeout_ms
        )
        return answer.capabilities

    return UpstreamClient(label, get_run, get_capabilities, transport.aclose)


async def post_proto(
    http: httpx.AsyncClient, url: str, request: Message, response_type: type[M]
) -> M:
    """A Connect unary call by hand: POST binary protobuf, decode the binary answer."""
    response = await http.post(
        url,
        content=request.SerializeToString(),
        headers={"Content-Type": "application/proto", "Connect-Protocol-Version": "1"},
    )
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} answered {response.status_code}: {response.text[:200]}")
    return response_type.FromString(response.content)


def httpx_client(label: str, endpoint: str, *, http2: bool, max_concurrency: int) -> UpstreamClient:
    """httpx posting Connect unary requests; HTTP/2 means h2c with prior knowledge."""
    # Keep as many idle connections as there are workers: httpx's default of 20 would
    # make HTTP/1.1 at high concurrency reconnect constantly and look worse than it is.
    limits = httpx.Limits(
        max_connections=max(100, max_concurrency),
        max_keepalive_connections=max_concurrency,
    )
    http = httpx.AsyncClient(
        http1=not http2, http2=http2, limits=limits, timeout=CALL_TIMEOUT_SECONDS
    )

    async def get_run(run_id: str) -> types_pb2.Run:
        answer = await post_proto(
            http,
            f"{endpoint}{RUN_SERVICE}/GetRun",
            run_service_pb2.GetRunRequest(run_id=run_id),
            run_service_pb2.GetRunResponse,
        )
        return answer.run

    async def get_capabilities() -> types_pb2.Capabilities:
        answer = await post_proto(
            http,
            f"{endpoint}{WORKFLOW_SERVICE}/GetCapabilities",
            workflow_service_pb2.GetCapabilitiesRequest(),
            workflow_service_pb2.GetCapabilitiesResponse,
        )
        return answer.capabilities

    return UpstreamClient(label, get_run, get_capabilities, http.aclose)


async def first_run_id(endpoint: str) -> str:
    """A run the subsystem certainly has: the first one it lists."""
    transport = _common.h2c_transport()
    try:
        runs = run_service_connect.RunServiceClient(
            endpoint, http_client=pyqwest.Client(transport), send_compression=None
        )
        answer = await runs.list_runs(
            run_service_pb2.ListRunsRequest(pagination=types_pb2.PaginationRequest(limit=1))
        )
    finally:
        await transport.aclose()
    if not answer.runs:
        raise RuntimeError(f"the demo subsystem at {endpoint} lists no runs")
    return answer.runs[0].id


def checked_get_run(client: UpstreamClient, run_id: str) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        run = await client.get_run(run_id)
        if run.id != run_id:
            raise RuntimeError(f"{client.label}: GetRun({run_id}) returned run {run.id!r}")

    return call


def checked_get_capabilities(client: UpstreamClient) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        capabilities = await client.get_capabilities()
        if not capabilities.analytics:
            raise RuntimeError(f"{client.label}: GetCapabilities lost the analytics flag")

    return call


@dataclass(frozen=True)
class Row:
    rpc: str
    concurrency: int
    client: str
    sample: _common.Sample


async def measure_all(endpoint: str, args: argparse.Namespace) -> list[Row]:
    levels: tuple[int, ...] = args.concurrency
    clients = [
        connect_client("(a) connectrpc+pyqwest h2c, no compression", endpoint, compress=False),
        connect_client("(b) connectrpc+pyqwest h2c, gzip requests", endpoint, compress=True),
        httpx_client("(c) httpx HTTP/1.1", endpoint, http2=False, max_concurrency=max(levels)),
        httpx_client("(d) httpx HTTP/2 (h2c)", endpoint, http2=True, max_concurrency=max(levels)),
    ]
    try:
        run_id = await first_run_id(endpoint)
        _common.note(f"timing against {endpoint} (run {run_id})")
        rows: list[Row] = []
        for rpc in ("GetRun", "GetCapabilities"):
            for concurrency in levels:
                for client in clients:
                    call = (
                        checked_get_run(client, run_id)
                        if rpc == "GetRun"
                        else checked_get_capabilities(client)
                    )
                    sample = await _common.measure(
                        call, calls=args.calls, concurrency=concurrency, warmup=args.warmup
                    )
                    rows.append(Row(rpc, concurrency, client.label, sample))
                    _common.progress(f"{rpc} c={concurrency} {client.label}", sample)
        return rows
    finally:
        for client in clients:
            await client.close()


def results_table(rows: list[Row]) -> str:
    """calls/s and latency per client, with calls/s relative to (a) at the same rpc and level."""
    baselines = {
        (row.rpc, row.concurrency): row.sample.calls_per_second
        for row in rows
        if row.client.startswith("(a)")
    }
    return _common.format_table(
        ["client", "rpc", "conc", "calls/s", "p50 ms", "p95 ms", "vs (a)"],
        [
            [
                row.client,
                row.rpc,
                str(row.concurrency),
                f"{row.sample.calls_per_second:,.0f}",
                f"{row.sample.p50_ms:.2f}",
                f"{row.sample.p95_ms:.2f}",
                _common.ratio(row.sample.calls_per_second, baselines[(row.rpc, row.concurrency)]),
            ]
            for row in rows
        ],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare upstream clients on small unary calls to one demo subsystem "
        "(pyvoy, HTTP/1.1 + h2c) on loopback; prints calls/s and the ratio to the "
        "client the gateway uses."
    )
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls before each")
    parser.add_argument(
        "--concurrency",
        type=_common.concurrency_option,
        default=(1, 64),
        help="comma-separated numbers of calls in flight (default 1,64)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="50 calls, 10 warm-up: proves it works, not a result"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.warmup = 50, 10
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be at least 1 and --warmup not negative")
    return args


def benchmark(args: argparse.Namespace) -> int:
    print(f"# upstream clients: {_common.machine_banner()}", flush=True)
    with _common.children() as group:
        # No gateway listens at this address; the subsystem only serves its API here.
        nowhere = f"http://127.0.0.1:{free_port()}"
        subsystem = group.start_subsystem("orders", nowhere, seed=1)
        rows = _common.run_async(measure_all(subsystem.url, args))
        clean = _common.report_exits(group.stop_all())
    print(
        f"# one demo subsystem (pyvoy) at {subsystem.url}; {args.calls} timed calls after "
        f"{args.warmup} warm-up per row; vs (a) = calls/s relative to (a)"
    )
    print(results_table(rows), flush=True)
    return 0 if clean else _common.EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
