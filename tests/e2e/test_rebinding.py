"""DNS rebinding: no connection ever reaches the address the policy denies.

A name answers 127.0.0.1 or 127.0.0.2 at random (TTL 0), 127.0.0.2 is denied, and a
listener there counts connections. Registration, discovery, ListRuns, a routed GetRun
and a WatchStats stream, under pyvoy and under uvicorn, to a plain and an https
endpoint, all reach the subsystems at 127.0.0.1 with the name as Host, and 127.0.0.2
sees nothing. The attack runs in a network namespace made for it (loopback only; see
tests/support/rebinding.py), which needs root and `ip`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ROOT
from tests.support.rebinding import NAME, RPCS

NETNS = f"fwlegs-rebind-{os.getpid()}"
RUN_TIMEOUT_S = 300


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace (ip netns add)"
    for tool in ("ip", "openssl"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (iproute2, openssl) for the rebinding namespace"
    if shutil.which("redis-server") is None:
        return "needs redis-server (the uvicorn replica shares a registry)"
    return None


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A namespace with only loopback up, whose resolv.conf names 127.0.0.1 (inside it)."""
    config = Path("/etc/netns") / NETNS
    made_etc_netns = not config.parent.exists()
    try:
        created = _ip("netns", "add", NETNS)
        if created.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
        assert _ip("-n", NETNS, "link", "set", "lo", "up").returncode == 0
        config.mkdir(parents=True, exist_ok=True)
        (config / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1\n")
        yield NETNS
    finally:
        listed = _ip("netns", "pids", NETNS).stdout.split()
        for pid in map(int, listed):  # only what the test started lives in there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _ip("netns", "delete", NETNS)
        shutil.rmtree(config, ignore_errors=True)
        if made_etc_netns:
            shutil.rmtree(config.parent, ignore_errors=True)


def run_attack(netns: str, server: str, workdir: Path) -> dict[str, object]:
    command = [
        "ip", "netns", "exec", netns,
        sys.executable, "-m", "tests.support.rebinding",
        "drive", "--server", server, "--workdir", str(workdir),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
            return result
    raise AssertionError(f"no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
@pytest.mark.parametrize("server", ["pyvoy", "uvicorn"])
def test_no_connection_reaches_the_denied_address(netns: str, server: str, tmp_path: Path) -> None:
    result = run_attack(netns, server, tmp_path)
    assert result["denied_connections"] == 0, result
    dns = result["dns_answers"]
    assert isinstance(dns, dict) and dns["127.0.0.2"] >= 3, result  # the attack was made
    ports = result["ports"]
    reached = result["reached"]
    assert isinstance(ports, dict) and isinstance(reached, dict)
    for subsystem, port in (("sub", ports["plain"]), ("subtls", ports["tls"])):
        # Every leg reached the subsystem at the checked address, under its name.
        assert set(RPCS) <= set(reached[subsystem]), result
        for rpc in RPCS:
            assert reached[subsystem][rpc] == [f"{NAME}:{port}"], result
    assert result["rows_from"] == ["sub", "subtls"], result
    assert result["runs_found"] == ["sub-run-00011", "subtls-run-00011"], result
    assert isinstance(result["snapshots"], int) and result["snapshots"] >= 1, result
