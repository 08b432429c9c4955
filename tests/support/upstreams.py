"""Subsystems for proxy tests: real demo servers, a registrar, and broken endpoints.

A demo server here is the in-memory FlowWatch engine served by uvicorn (HTTP/1.1
only, so the gateway's h2c-then-HTTP/1.1 negotiation is exercised) in its own
process. Registration is done by a separate minimal registrar process
(`python -m tests.support.harness subsystem`) that, like the Go client, announces no workflows or
capabilities, so the gateway's discovery is exercised too.

    python -m tests.support.upstreams demo --id orders --port 9101 --seed 1 \
        --now 2026-11-27T12:00:00+00:00
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import (
    ROOT,
    STARTUP_TIMEOUT,
    GatewayProcess,
    start_gateway,
    subsystem_states,
)


def start_demo_server(
    subsystem_id: str,
    seed: int,
    now: datetime,
    port: int | None = None,
    *,
    print_header: str | None = None,
) -> tuple[Child, str]:
    """A demo FlowWatch subsystem under uvicorn; returns (process, endpoint URL).

    With `print_header` (one name, or several separated by commas), the server prints
    `HEADER <path> <name> <value>` to its output (see Child.logs) for every such header
    a request carries: what the gateway forwarded.
    """
    port = port or free_port()
    proc = Child(
        f"demo server {subsystem_id}",
        [
            sys.executable,
            "-m",
            "tests.support.upstreams",
            "demo",
            "--id",
            subsystem_id,
            "--port",
            str(port),
            "--seed",
            str(seed),
            "--now",
            now.isoformat(),
            *(["--print-header", print_header] if print_header else []),
        ],
        cwd=ROOT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        proc.start().wait_http_ok(f"{endpoint}/healthz", STARTUP_TIMEOUT)
    except BaseException:
        proc.close()
        raise
    return proc, endpoint


def start_registrar(gateway_url: str, subsystem_id: str, endpoint: str) -> Child:
    """Registers `endpoint` as `subsystem_id` and answers pings, like a Go subsystem."""
    return Child(
        f"registrar {subsystem_id}",
        [
            sys.executable,
            "-m",
            "tests.support.harness",
            "subsystem",
            "--gateway",
            gateway_url,
            "--id",
            subsystem_id,
            "--endpoint",
            endpoint,
        ],
        cwd=ROOT,
    ).start()


@contextlib.contextmanager
def hung_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung subsystem."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def dead_endpoint() -> str:
    """An endpoint nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def post(url: str, rpc: str, body: dict[str, object]) -> httpx.Response:
    """A Connect JSON unary call, as the browser UI makes it."""
    return httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1", "Origin": "http://localhost:5173"},
        timeout=10,
    )


@dataclass
class DemoStack:
    gateway: GatewayProcess
    endpoints: dict[str, str]


DEMO_WORKFLOWS_PER_SUBSYSTEM = 4


@contextlib.contextmanager
def demo_stack(subsystems: Mapping[str, int], *gateway_args: str) -> Iterator[DemoStack]:
    """A pyvoy gateway with demo subsystems (id -> seed) registered and discovered."""
    now = datetime.now(UTC).replace(microsecond=0)
    processes: list[Child] = []
    with start_gateway(*gateway_args) as gateway:
        try:
            endpoints = {}
            for sid, seed in subsystems.items():
                proc, endpoint = start_demo_server(sid, seed, now)
                processes.append(proc)
                endpoints[sid] = endpoint
            for sid, endpoint in endpoints.items():
                processes.append(start_registrar(gateway.url, sid, endpoint))
            wait_until(
                lambda: subsystem_states(gateway.url) == dict.fromkeys(subsystems, "connected"),
                20,
                "connected subsystems",
            )
            # Discovery (workflows + capabilities fetched from each subsystem) is async.
            wait_until(
                lambda: (
                    post(
                        gateway.url, "WorkflowService/ListWorkflows", {"pagination": {"limit": 100}}
                    )
                    .json()
                    .get("pagination", {})
                    .get("totalCount")
                    == DEMO_WORKFLOWS_PER_SUBSYSTEM * len(subsystems)
                ),
                20,
                "workflow discovery",
            )
            yield DemoStack(gateway, endpoints)
        finally:
            for proc in processes:
                proc.close()


def _serve_demo(args: argparse.Namespace) -> None:
    import uvicorn

    from flowwatch_gateway.demo.app import create_demo_app
    from flowwatch_gateway.demo.engine import InMemoryEngine

    engine = InMemoryEngine.demo(args.id, seed=args.seed, now=datetime.fromisoformat(args.now))
    app = create_demo_app(engine)
    if args.print_header:
        app = _printing_headers(app, args.print_header.lower().encode().split(b","))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def _printing_headers(app: Any, names: list[bytes]) -> Any:
    async def printing(scope: Any, receive: Any, send: Any) -> None:
        for key, value in scope.get("headers", ()):
            if key in names:
                shown = f"{key.decode('latin-1')} {value.decode('latin-1')}"
                print(f"HEADER {scope['path']} {shown}", flush=True)
        await app(scope, receive, send)

    return printing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo")
    demo.add_argument("--id", required=True)
    demo.add_argument("--port", type=int, required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--now", required=True)
    demo.add_argument("--print-header")
    _serve_demo(parser.parse_args())


if __name__ == "__main__":
    main()
