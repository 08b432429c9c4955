"""A DNS rebinding attack on the gateway, run inside a network namespace (loopback only).

tests/e2e/test_rebinding.py creates the namespace and runs `drive` in it with
`ip netns exec`, which puts /etc/netns/NAME/resolv.conf (nameserver 127.0.0.1) over
/etc/resolv.conf, so every resolver in these processes asks RebindingDns:

- RebindingDns answers NAME with 127.0.0.1 or 127.0.0.2 at random (TTL 0): a check
  that sees 127.0.0.1 may well be followed by a lookup that sees 127.0.0.2. A
  registration whose check saw 127.0.0.2 is refused, and tried again.
- Real demo subsystems listen on 127.0.0.1 (one plain, one https with a certificate
  for NAME from a test CA the gateway trusts through SSL_CERT_FILE) and print the
  Host header of every request; a Trap on 127.0.0.2 at the same ports counts any
  connection that reaches it.
- The gateway denies 127.0.0.2 (GATEWAY_ENDPOINT_DENY). Under uvicorn, which cannot
  take Register streams, a pyvoy replica takes the registrations and the uvicorn one
  (sharing Redis) answers the calls.

`drive` registers both subsystems by name and calls until discovery, ListRuns, a
routed GetRun and a WatchStats stream have reached both, then prints one JSON line:
what reached the subsystems, what the DNS server answered, and the Trap's counts.

    ip netns exec NAME python -m tests.support.rebinding drive --server pyvoy --workdir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyqwest
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway import exit_guard
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_connect
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import ROOT, STARTUP_TIMEOUT, GatewayProcess, start_gateway
from tests.support.upstreams import start_demo_server, start_registrar

NAME = "sub.flowwatch.test"
CHECKED = "127.0.0.1"
DENIED = "127.0.0.2"
RPCS = (
    "WorkflowService/GetCapabilities",
    "RunService/ListRuns",
    "RunService/GetRun",
    "StreamService/WatchStats",
)
REGISTER_TRIES = 30
DRIVE_TIMEOUT_S = float(os.environ.get("FLOWWATCH_REBIND_DRIVE_S", "150"))


class RebindingDns:
    """UDP DNS on 127.0.0.1:53: A for NAME is CHECKED, or once armed CHECKED or DENIED by
    a coin toss per query (TTL 0); AAAA for NAME is empty; other names do not exist.
    It is armed once the demo servers are ready (their readiness waits use no name)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.sock.settimeout(0.2)
        self.answered = {CHECKED: 0, DENIED: 0}
        # A coin rather than strict turns: several resolvers share this server, and
        # turns could leave one of them always on the same side.
        self._coin = random.Random(20261208)
        self.armed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> RebindingDns:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(ValueError, IndexError, struct.error, OSError):
                self.sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack(">H", query[:2])
        at, labels = 12, []
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode().lower())
            at += 1 + query[at]
        qtype, _ = struct.unpack(">HH", query[at + 1 : at + 5])
        question = query[12 : at + 5]
        if ".".join(labels) != NAME:
            return struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != 1:
            return struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question
        armed = self.armed.is_set()
        address = DENIED if armed and self._coin.random() < 0.5 else CHECKED
        self.answered[address] += 1
        record = struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
        return struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + record


class Trap:
    """Counts TCP connections to DENIED:port (and closes them at once)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.listener = socket.create_server((DENIED, port))
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.listener.close()


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for NAME, its key), made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=FlowWatch rebinding test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", f"/CN={NAME}",
    )  # fmt: skip
    (workdir / "server.ext").write_text(
        f"subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext",
    )  # fmt: skip
    return workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"


def start_tls_demo(port: int, cert: Path, key: Path) -> Child:
    """The demo subsystem `subtls` over https on CHECKED:port, printing Host headers."""
    proc = Child(
        "tls demo subsystem",
        [
            sys.executable,
            "-m",
            "tests.support.rebinding",
            "tls-demo",
            "--port",
            str(port),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        cwd=ROOT,
    ).start()
    try:
        proc.wait_for(lambda: _listening(port), STARTUP_TIMEOUT, f"listening on {port}")
    except BaseException:
        proc.close()
        raise
    return proc


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((CHECKED, port), timeout=0.5):
        return True
    return False


def _serve_tls_demo(args: argparse.Namespace) -> None:
    import uvicorn

    from flowwatch_gateway.demo.app import create_demo_app
    from flowwatch_gateway.demo.engine import InMemoryEngine
    from tests.support.upstreams import _printing_headers

    engine = InMemoryEngine.demo("subtls", seed=2, now=datetime.now(UTC))
    app = _printing_headers(create_demo_app(engine), [b"host"])
    uvicorn.run(
        app,
        host=CHECKED,
        port=args.port,
        log_level="warning",
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
    )


def reached(subsystem: Child) -> dict[str, set[str]]:
    """rpc -> the Host headers it arrived with, from a demo server's HEADER lines."""
    found: dict[str, set[str]] = {}
    for line in subsystem.logs().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "HEADER" and parts[2] == "host":
            rpc = parts[1].removeprefix("/flowwatch.v1.")
            found.setdefault(rpc, set()).add(parts[3])
    return found


async def first_stats(url: str) -> bool:
    """Whether WatchStats sent a snapshot (Connect over HTTP/1.1: uvicorn serves that)."""
    transport = pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP1)
    try:
        client = stream_service_connect.StreamServiceClient(
            url, protocol=ProtocolType.CONNECT, http_client=pyqwest.Client(transport)
        )
        request = stream.WatchStatsRequest(interval_seconds=1)
        snapshots = client.watch_stats(request, timeout_ms=5000)
        with contextlib.suppress(ConnectError):
            async with contextlib.aclosing(snapshots):  # type: ignore[type-var]
                async for _ in snapshots:
                    return True
        return False
    finally:
        await transport.aclose()


def post(url: str, rpc: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1"},
        timeout=15,
    )


@contextlib.contextmanager
def gateways(server: str, deny: str, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(URL subsystems register at, URL the calls go to)."""
    common = ("--endpoint-deny", deny, "--heartbeat", "1s", "--upstream-timeout", "3s")
    with contextlib.ExitStack() as stack:
        if server == "pyvoy":
            gateway: GatewayProcess = stack.enter_context(start_gateway(*common, env=env))
            yield gateway.url, gateway.url
            return
        from tests.support.redis_server import RedisServer

        redis = RedisServer().start_ready()
        stack.callback(redis.close)
        shared = ("--redis-url", redis.url, *common)
        front = stack.enter_context(start_gateway(*shared, env=env))
        viewer = stack.enter_context(start_gateway(*shared, env=env, server="uvicorn"))
        yield front.url, viewer.url


def _settled(registrar: Child) -> bool:
    logs = registrar.logs()
    return "REGISTERED accepted=True" in logs or "ENDED" in logs


def register(url: str, subsystem_id: str, endpoint: str) -> tuple[Child, int]:
    """A registrar whose registration was accepted, and how many tries that took: the
    gateway refuses one whose check saw the denied address, and the registrar then ends."""
    for tries in range(1, REGISTER_TRIES + 1):
        registrar = start_registrar(url, subsystem_id, endpoint)
        registrar.wait_for(
            functools.partial(_settled, registrar), STARTUP_TIMEOUT, "registered or refused"
        )
        if "REGISTERED accepted=True" in registrar.logs():
            return registrar, tries
        registrar.close()
    raise AssertionError(f"{subsystem_id} was never registered in {REGISTER_TRIES} tries")


def drive(server: str, workdir: Path) -> dict[str, Any]:
    ca, cert, key = make_certificates(workdir)
    dns = RebindingDns().start()
    plain_port, tls_port = free_port(CHECKED), free_port(CHECKED)
    traps = [Trap(plain_port), Trap(tls_port)]
    children: list[Child] = []
    env = {"SSL_CERT_FILE": str(ca)}
    try:
        plain, _ = start_demo_server(
            "sub", 1, datetime.now(UTC), port=plain_port, print_header="host"
        )
        children.append(plain)
        secure = start_tls_demo(tls_port, cert, key)
        children.append(secure)
        with gateways(server, DENIED, env) as (register_url, call_url):
            dns.armed.set()  # from the first registration on
            refused = 0
            for subsystem_id, endpoint in (
                ("sub", f"http://{NAME}:{plain_port}"),
                ("subtls", f"https://{NAME}:{tls_port}"),
            ):
                registrar, tries = register(register_url, subsystem_id, endpoint)
                children.append(registrar)
                refused += tries - 1
            rows: set[str] = set()
            found_runs: set[str] = set()
            snapshots = 0
            deadline = time.monotonic() + DRIVE_TIMEOUT_S

            def done() -> bool:
                return (
                    all(set(RPCS) <= set(reached(child)) for child in (plain, secure))
                    and dns.answered[DENIED] >= 3
                )

            while not done() and time.monotonic() < deadline:
                listing = post(call_url, "RunService/ListRuns", {"pagination": {"limit": 50}})
                if listing.status_code == 200:
                    rows.update(run["subsystemId"] for run in listing.json().get("runs", []))
                for run_id in ("sub-run-00011", "subtls-run-00011"):
                    if post(call_url, "RunService/GetRun", {"runId": run_id}).status_code == 200:
                        found_runs.add(run_id)
                snapshots += asyncio.run(first_stats(call_url))
                time.sleep(0.2)  # a poll interval, bounded by the deadline above
        return {
            "server": server,
            "ports": {"plain": plain_port, "tls": tls_port},
            "denied_connections": sum(trap.connections for trap in traps),
            "dns_answers": dns.answered,
            "reached": {
                "sub": {rpc: sorted(hosts) for rpc, hosts in reached(plain).items()},
                "subtls": {rpc: sorted(hosts) for rpc, hosts in reached(secure).items()},
            },
            "rows_from": sorted(rows),
            "runs_found": sorted(found_runs),
            "snapshots": snapshots,
            "registrations_refused": refused,
        }
    finally:
        for child in reversed(children):
            child.close()
        for trap in traps:
            trap.close()
        dns.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("drive")
    run.add_argument("--server", choices=("pyvoy", "uvicorn"), required=True)
    run.add_argument("--workdir", type=Path, required=True)
    tls = commands.add_parser("tls-demo")
    tls.add_argument("--port", type=int, required=True)
    tls.add_argument("--cert", required=True)
    tls.add_argument("--key", required=True)
    args = parser.parse_args()
    if args.command == "tls-demo":
        _serve_tls_demo(args)
        return
    exit_guard.install()
    print("RESULT " + json.dumps(drive(args.server, args.workdir)), flush=True)


if __name__ == "__main__":
    main()
