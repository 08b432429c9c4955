"""Routed GetRun under outside load generators: direct, gateway (both paths), nginx.

The numbers behind issue 12's table. One subsystem is called four ways with the same
binary Connect request for one run, whose owner each gateway has already learned:

  direct        the subsystem itself
  bare          bare_passthrough.py: a bare byte passthrough under pyvoy (body in, the
                same Envoy cluster out, answer back; nothing else), the floor for any
                gateway written as an ASGI app under pyvoy
  gateway       a pyvoy gateway with the passthrough (GATEWAY_PASSTHROUGH=true, default)
  decoding      a second pyvoy gateway with --passthrough false (every call decoded)
  nginx         nginx (if installed) proxying to the subsystem over HTTP/1.1 keep-alive;
                HTTP/1.1 rows only (nginx's h2c listener stalled on these small POSTs at
                one request in flight: seconds per request, not a proxy's cost)

The subsystem (`--subsystem`): by default `fast_subsystem.mjs`, one Node thread in
front of a demo subsystem that answers the repeated GetRun from memory, like the
Node subsystem of issue 12's table (h2c and HTTP/1.1 on one port); `demo` calls
the Python demo subsystem itself, which on 2 cores competes with the gateway for
CPU (see README). Both gateways have `orders` registered at the same address.

Load: h2load (Debian's nghttp2-client) over h2c and wrk (Debian's wrk) over
HTTP/1.1, at 1 and 64 requests in flight, for a fixed time per cell; every cell of a
round runs back to back, and rounds repeat (default 3): each table cell is the median
over rounds, and ratios are taken per round against that round's direct number, then
the median. A missing load generator or nginx is reported, not fatal.

    .venv/bin/python bench/routed_proxy.py                 # ~4 min: 3 rounds, 5 s per cell
    .venv/bin/python bench/routed_proxy.py --quick         # seconds; proves it works
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import _common
import httpx

from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2
from flowwatch_gateway.processes import Child, free_port

PATH = "/flowwatch.v1.RunService/GetRun"
IN_FLIGHT = (1, 64)
H2_CONNECTIONS_AT_64 = 4  # 4 connections x 16 streams: how browsers and gateways multiplex
DISCOVERY_TIMEOUT_S = 60.0
MISSING = "missing"


@dataclass(frozen=True)
class Cell:
    """One measurement: requests/s and latency percentiles in milliseconds."""

    rps: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Target:
    name: str
    url: str


# --- load generators ------------------------------------------------------------------------


def h2load(url: str, body: Path, in_flight: int, seconds: int) -> Cell:
    """h2c load with h2load; percentiles from its per-request log."""
    connections = 1 if in_flight == 1 else H2_CONNECTIONS_AT_64
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        command = [
            "h2load",
            *("-D", f"{seconds:g}", "--warm-up-time", "1"),
            *("-c", str(connections), "-m", str(in_flight // connections)),
            *("-t", "1", "-d", str(body)),
            *("-H", "content-type: application/proto", "-H", "connect-protocol-version: 1"),
            *("--log-file", log.name),
            f"{url}{PATH}",
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        _check_statuses(out.stdout + out.stderr, "2xx", command)
        rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout)[1])  # type: ignore[index]
        durations = sorted(
            int(line.split("\t")[2]) / 1000 for line in Path(log.name).read_text().splitlines()
        )
    return Cell(rps, _common.percentile(durations, 0.50), _common.percentile(durations, 0.99))


WRK_SCRIPT = """
local f = io.open(os.getenv("WRK_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/proto"
wrk.headers["Connect-Protocol-Version"] = "1"
function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\\n")
    os.exit(1)
  end
end
"""


def wrk(url: str, body: Path, in_flight: int, seconds: int) -> Cell:
    """HTTP/1.1 keep-alive load with wrk (one connection per request in flight)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        threads = min(in_flight, 2)
        command = [
            "wrk",
            *("-t", str(threads), "-c", str(in_flight), "-d", f"{seconds}s"),
            *("--latency", "-s", script.name),
            f"{url}{PATH}",
        ]
        env = {**os.environ, "WRK_BODY": str(body)}
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, env=env)
        if out.returncode != 0 or "Non-2xx" in out.stdout:
            raise RuntimeError(f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}")
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)[1])  # type: ignore[index]
        return Cell(rps, _wrk_percentile(out.stdout, "50%"), _wrk_percentile(out.stdout, "99%"))


def _wrk_percentile(text: str, label: str) -> float:
    match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {label} latency in wrk output:\n{text}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
    return float(match[1]) * scale


def _check_statuses(text: str, ok: str, command: Sequence[str]) -> None:
    match = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if match is None or int(match[1]) == 0 or any(int(match[i]) for i in (2, 3, 4)):
        raise RuntimeError(f"{' '.join(command)}: not every answer was {ok}:\n{text}")


LOADS = {"h2c": ("h2load", h2load), "HTTP/1.1": ("wrk", wrk)}


# --- nginx ----------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  upstream subsystem {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://subsystem;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def start_nginx(group: _common.Children, upstream_port: int, workdir: Path) -> Target | None:
    """nginx in front of the subsystem (HTTP/1.1), or None when it is not installed."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, upstream_port=upstream_port, port=port))
    child = group.start(Child("nginx", [binary, "-c", str(conf), "-p", str(workdir)]))
    child.wait_for(lambda: _listening(port), 10, "listening")
    return Target("nginx", f"http://127.0.0.1:{port}")


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


# --- the stack ------------------------------------------------------------------------------


FAST_SUBSYSTEM = Path(__file__).with_name("fast_subsystem.mjs")


@dataclass(frozen=True)
class Subsystem:
    """Where the routed calls end (h2c and HTTP/1.1 on one port)."""

    url: str
    port: int


def start_fast_subsystem(group: _common.Children, demo_url: str) -> Subsystem | None:
    """Node (fast_subsystem.mjs) in front of the demo, or None when node is not installed."""
    node = shutil.which("node")
    if node is None:
        return None
    port = free_port()
    child = group.start(Child("fast subsystem", [node, str(FAST_SUBSYSTEM), str(port), demo_url]))
    child.wait_for(lambda: _listening(port), 10, "listening")
    return Subsystem(f"http://127.0.0.1:{port}", port)


BARE_PASSTHROUGH = Path(__file__).with_name("bare_passthrough.py")


def start_bare(group: _common.Children, subsystem_port: int) -> Target:
    port = free_port()
    command = [sys.executable, str(BARE_PASSTHROUGH), str(port), f"127.0.0.1:{subsystem_port}"]
    child = group.start(Child("bare passthrough", command))
    child.wait_for(lambda: _listening(port), _common.STARTUP_TIMEOUT_SECONDS, "listening")
    return Target("bare", f"http://127.0.0.1:{port}")


def start_gateway(group: _common.Children, *extra: str) -> _common.Served:
    port = free_port()
    args = ["serve", "--addr", f"127.0.0.1:{port}", "--server", "pyvoy", *extra]
    child = group.start(_common.Served("gateway", "flowwatch_gateway.cli", args, port))
    child.wait_http_ok(f"{child.url}/readyz", _common.STARTUP_TIMEOUT_SECONDS)
    return child


def connect_call(url: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}{PATH}",
        content=body,
        headers={"Content-Type": "application/proto", "Connect-Protocol-Version": "1"},
        timeout=10,
    )


def first_run_id(subsystem_url: str) -> str:
    request = run_service_pb2.ListRunsRequest()
    request.pagination.limit = 1
    answer = httpx.post(
        f"{subsystem_url}/flowwatch.v1.RunService/ListRuns",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/proto"},
        timeout=10,
    )
    answer.raise_for_status()
    return run_service_pb2.ListRunsResponse.FromString(answer.content).runs[0].id


def wait_routed(gateway_url: str, body: bytes, run_id: str) -> None:
    """Until the gateway answers the GetRun (its subsystem registered, the owner learned)."""
    deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        answer = connect_call(gateway_url, body)
        if answer.status_code == 200:
            run = run_service_pb2.GetRunResponse.FromString(answer.content).run
            if run.id == run_id and run.subsystem_id == "orders":
                return
        time.sleep(0.2)
    raise RuntimeError(f"{gateway_url} did not route GetRun {run_id} in time")


# --- the run --------------------------------------------------------------------------------


Results = dict[tuple[str, str, int], list[Cell]]  # (protocol, target, in flight) -> rounds


def measure(targets: dict[str, list[Target]], body: Path, rounds: int, seconds: int) -> Results:
    results: Results = {}
    loadavg: list[float] = []
    for number in range(1, rounds + 1):
        for protocol, (tool, load) in LOADS.items():
            if shutil.which(tool) is None:
                continue
            for in_flight in IN_FLIGHT:
                for target in targets[protocol]:
                    cell = load(target.url, body, in_flight, seconds)
                    results.setdefault((protocol, target.name, in_flight), []).append(cell)
                    _common.note(
                        f"round {number} {protocol} {in_flight} in flight {target.name}: "
                        f"{cell.rps:,.0f} req/s, p50 {cell.p50_ms:.2f} ms"
                    )
        loadavg.append(os.getloadavg()[0])
    print(f"# 1-minute load average after each round: {', '.join(f'{v:.1f}' for v in loadavg)}")
    return results


def table(results: Results, names: Sequence[str]) -> str:
    rows = []
    for protocol in LOADS:
        for in_flight in IN_FLIGHT:
            direct = results.get((protocol, "direct", in_flight))
            if not direct:
                continue
            bare = results.get((protocol, "bare", in_flight))
            for name in names:
                cells = results.get((protocol, name, in_flight))
                if not cells:
                    continue
                ratios = [c.rps / d.rps for c, d in zip(cells, direct, strict=True)]
                added = [c.p50_ms - d.p50_ms for c, d in zip(cells, direct, strict=True)]
                p99_ratio = [c.p99_ms / d.p99_ms for c, d in zip(cells, direct, strict=True)]
                to_bare = ""
                if bare and name in ("gateway", "decoding"):
                    pairs = zip(cells, bare, strict=True)
                    to_bare = f"{statistics.median(c.rps / b.rps for c, b in pairs):.2f}x"
                rows.append(
                    [
                        protocol,
                        str(in_flight),
                        name,
                        f"{statistics.median(c.rps for c in cells):,.0f}",
                        "" if name == "direct" else f"{statistics.median(ratios):.2f}x",
                        f"{statistics.median(c.p50_ms for c in cells):.2f}",
                        "" if name == "direct" else f"{statistics.median(added):+.2f}",
                        f"{statistics.median(c.p99_ms for c in cells):.2f}",
                        "" if name == "direct" else f"{statistics.median(p99_ratio):.2f}x",
                        to_bare,
                    ]
                )
    return _common.format_table(
        [
            "protocol",
            "in flight",
            "path",
            "req/s",
            "x direct",
            "p50 ms",
            "added p50",
            "p99 ms",
            "p99 x direct",
            "req/s x bare",
        ],
        rows,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s cells: a smoke check")
    parser.add_argument(
        "--subsystem",
        choices=("node", "demo"),
        default="node",
        help="node: fast_subsystem.mjs in front of the demo (default; the demo when node "
        "is missing); demo: the Python demo subsystem itself",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 1
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    return args


def benchmark(args: argparse.Namespace) -> int:
    print(f"# routed GetRun: {_common.machine_banner()}", flush=True)
    tools = {tool: shutil.which(tool) for tool, _ in LOADS.values()}
    for tool, found in tools.items():
        if found is None:
            print(
                f"# {tool} not found: its rows are skipped (Debian: apt-get install "
                f"{'nghttp2-client' if tool == 'h2load' else 'wrk'})"
            )
    if not any(tools.values()):
        print("# no load generator installed; nothing to measure")
        return 0
    with tempfile.TemporaryDirectory() as scratch, _common.children() as group:
        workdir = Path(scratch)
        gateway = start_gateway(group)
        decoding = start_gateway(group, "--passthrough", "false")
        demo = group.start_subsystem("orders", "http://127.0.0.1:1", seed=1)
        fast = start_fast_subsystem(group, demo.url) if args.subsystem == "node" else None
        if fast is None:
            if args.subsystem == "node":
                print("# node not found: the demo subsystem is called directly instead")
            subsystem = Subsystem(demo.url, int(demo.url.rsplit(":", 1)[1]))
        else:
            subsystem = fast
        print(f"# subsystem: {'Node in front of the demo' if fast else 'the demo (Python)'}")
        # Two registrars of the same data: each gateway learns `orders` at that endpoint.
        for gateway_url in (gateway.url, decoding.url):
            group.start_subsystem("orders", gateway_url, seed=1, endpoint=subsystem.url)
        run_id = first_run_id(demo.url)
        body_bytes = run_service_pb2.GetRunRequest(run_id=run_id).SerializeToString()
        body = workdir / "getrun.bin"
        body.write_bytes(body_bytes)
        for url in (gateway.url, decoding.url):
            wait_routed(url, body_bytes, run_id)
        bare = start_bare(group, subsystem.port)
        if connect_call(bare.url, body_bytes).status_code != 200:
            raise RuntimeError("the bare passthrough did not answer GetRun")
        nginx = start_nginx(group, subsystem.port, workdir)
        if nginx is None:
            print("# nginx not found: its rows are skipped (Debian: apt-get install nginx-light)")
        names = ["direct", "bare", "gateway", "decoding"]
        targets: dict[str, list[Target]] = {
            protocol: [
                Target("direct", subsystem.url),
                bare,
                Target("gateway", gateway.url),
                Target("decoding", decoding.url),
            ]
            for protocol in LOADS
        }
        if nginx is not None:
            names.append("nginx")
            targets["HTTP/1.1"].append(nginx)
        results = measure(targets, body, args.rounds, args.seconds)
        clean = _common.report_exits(group.stop_all())
    print(
        f"# {args.rounds} round(s) of {args.seconds:g} s per cell; medians over rounds, ratios "
        "paired per round; h2c: h2load (1 in flight: 1 connection; 64: "
        f"{H2_CONNECTIONS_AT_64} connections x {64 // H2_CONNECTIONS_AT_64} streams), "
        "HTTP/1.1: wrk (one connection per request in flight); client, gateways, "
        "subsystems and nginx all on this machine"
    )
    print(
        "# bare = bare_passthrough.py (pyvoy's floor); gateway = passthrough (default); "
        "decoding = GATEWAY_PASSTHROUGH=false"
    )
    print(table(results, names), flush=True)
    return 0 if clean else _common.EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return _common.run_benchmark(lambda: benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
