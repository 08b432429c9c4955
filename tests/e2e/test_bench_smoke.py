"""The benchmarks still run end to end, and leave no process behind.

Each benchmark is run as a script with tiny counts against real processes on
loopback. Nothing here looks at the numbers: only that the run completes, prints
its table and exits 0, and that an interrupted run stops its children.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
RUN_TIMEOUT_SECONDS = 120
STARTUP_TIMEOUT_SECONDS = 60


def load_common() -> ModuleType:
    """bench/_common.py by path: bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


common = load_common()


def marked_env(marker: str) -> dict[str, str]:
    """The environment for a benchmark whose every descendant can be found by `marker`."""
    return {**os.environ, "BENCH_SMOKE_MARKER": marker}


def processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes that inherited BENCH_SMOKE_MARKER=marker."""
    needle = f"BENCH_SMOKE_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and "\nState:\tZ" not in status:
            found.append(int(entry.name))
    return found


def run_script(name: str, *args: str, marker: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=ROOT,
        env=marked_env(marker),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )


def table_rows(stdout: str, first_header: str) -> list[str]:
    """The body lines of the table whose header line starts with `first_header`."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(first_header))
    assert set(lines[header + 1].replace(" ", "")) == {"-"}, "no rule under the header"
    return [line for line in lines[header + 2 :] if line and not line.startswith("#")]


def test_upstream_clients_runs_and_prints_every_row() -> None:
    marker = uuid.uuid4().hex
    result = run_script(
        "upstream_clients.py", "--calls", "10", "--warmup", "2", "--concurrency", "1,4",
        marker=marker,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "client")
    # 4 clients x 2 rpcs x 2 concurrency levels, each compared with (a).
    assert len(rows) == 16, result.stdout
    assert sum(row.startswith("(a)") and row.endswith("1.00x") for row in rows) == 4
    assert {row.split()[0] for row in rows} == {"(a)", "(b)", "(c)", "(d)"}
    assert "nproc" in result.stdout.splitlines()[0]
    assert "warning:" not in result.stderr, "a child did not exit 0"
    assert processes_with_marker(marker) == []


def test_gateway_overhead_runs_and_prints_every_row() -> None:
    marker = uuid.uuid4().hex
    result = run_script(
        "gateway_overhead.py", "--calls", "10", "--warmup", "2", "--concurrency", "1,4",
        marker=marker,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "rpc")
    assert [row.split()[0] for row in rows] == ["GetRun"] * 2 + ["ListRuns"] * 2 + [
        "GetThroughput"
    ] * 2, result.stdout
    assert "ask all 3 subsystems" in result.stdout
    assert "warning:" not in result.stderr, "a child did not exit 0"
    assert processes_with_marker(marker) == []


def test_fanout_quick_runs_and_prints_a_row_per_stage() -> None:
    marker = uuid.uuid4().hex
    result = run_script("fanout.py", "--quick", marker=marker)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "K")
    assert [row.split()[0] for row in rows] == ["1", "2"], result.stdout
    assert "warning:" not in result.stderr, "a child did not exit 0"
    assert processes_with_marker(marker) == []


def test_routed_proxy_runs_and_prints_a_row_per_tool_and_path() -> None:
    """Rows for each installed load generator; a missing one (or nginx) is said, not fatal."""
    marker = uuid.uuid4().hex
    result = run_script("routed_proxy.py", "--quick", marker=marker)
    assert result.returncode == 0, result.stderr
    tools = {"h2c": shutil.which("h2load"), "HTTP/1.1": shutil.which("wrk")}
    for protocol, tool in tools.items():
        if tool is None:
            name = "h2load" if protocol == "h2c" else "wrk"
            assert f"# {name} not found" in result.stdout
    if any(tools.values()):
        rows = table_rows(result.stdout, "protocol")
        nginx = "# nginx not found" not in result.stdout  # HTTP/1.1 rows only
        paths = {"h2c": 4, "HTTP/1.1": 5 if nginx else 4}
        wanted = sum(2 * paths[protocol] for protocol, tool in tools.items() if tool)
        assert len(rows) == wanted, result.stdout
        names = {row.split()[2] for row in rows}
        assert {"direct", "bare", "gateway", "decoding"} <= names, result.stdout
        assert names <= {"direct", "bare", "gateway", "decoding", "nginx"}
        assert "load average after each round" in result.stdout
    assert "warning:" not in result.stderr, "a child did not exit 0"
    assert processes_with_marker(marker) == []


@pytest.mark.parametrize("endpoints", ["unreachable", "demo"])
def test_scale_quick_runs_and_prints_every_row(endpoints: str) -> None:
    marker = uuid.uuid4().hex
    result = run_script("scale.py", "--quick", "--endpoints", endpoints, marker=marker)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "measure")
    wanted = ["all", "gateway", "gateway", "RSS", "ListSubsystems", "ListRuns"]
    if endpoints == "demo":
        wanted.append("GetRun")
    assert [row.split()[0] for row in rows] == wanted, result.stdout
    assert "50 Register streams" in result.stdout
    assert "warning:" not in result.stderr, "a child did not exit 0"
    assert processes_with_marker(marker) == []


def kill_leftovers(marker: str) -> None:
    """After a failed check, remove what the benchmark left, so one failure stays one."""
    for pid in processes_with_marker(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_interrupted_benchmark_stops_its_children() -> None:
    """Ctrl-C in the middle of timing: exit 130, the subsystem and its Envoy gone."""
    marker = uuid.uuid4().hex
    bench = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream_clients.py"), "--calls", "100000"],
        cwd=ROOT,
        env=marked_env(marker),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert bench.stderr is not None
        for line in bench.stderr:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not any("timing against" in line for line in seen):
            assert bench.poll() is None, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            assert time.monotonic() < deadline, f"timing never started:\n{''.join(seen)}"
        # The benchmark itself, the subsystem's supervisor and its Envoy.
        assert len(processes_with_marker(marker)) >= 3, "expected the subsystem and its Envoy"
        time.sleep(0.5)  # well inside the 100,000-call loop
        bench.send_signal(signal.SIGINT)
        assert bench.wait(timeout=60) == common.EXIT_INTERRUPTED
        reader.join(5)
        while not lines.empty():
            seen.append(lines.get())
        assert any("interrupted" in line for line in seen), "".join(seen)
        assert processes_with_marker(marker) == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        kill_leftovers(marker)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([1.0], 0.5, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.95, 4.0),
        ([float(v) for v in range(1, 101)], 0.95, 95.0),
        ([5.0, 6.0], 0.0, 5.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert common.percentile(values, fraction) == expected


def test_percentile_refuses_nothing_and_bad_fractions() -> None:
    with pytest.raises(ValueError, match="no values"):
        common.percentile([], 0.5)
    with pytest.raises(ValueError, match="within"):
        common.percentile([1.0], 1.5)


def test_parse_concurrency_explains_bad_input() -> None:
    assert common.parse_concurrency("1, 64") == (1, 64)
    with pytest.raises(ValueError, match="comma-separated"):
        common.parse_concurrency("1;64")
    with pytest.raises(ValueError, match="at least 1"):
        common.parse_concurrency("0,4")


def test_format_table_aligns_columns() -> None:
    table = common.format_table(["name", "n"], [["a", "1"], ["longer", "100"]])
    assert table.splitlines() == ["name      n", "------  ---", "a         1", "longer  100"]


def test_ratio_handles_missing_baselines() -> None:
    assert common.ratio(50.0, 100.0) == "0.50x"
    assert common.ratio(1.0, 0.0) == "-"
