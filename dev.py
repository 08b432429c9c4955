#!/usr/bin/env python3
"""Set-up and entry points for a fresh clone; needs only Python >= 3.11.

    python3 dev.py demo    # create .venv, install with the server and demo extras, start
                           # the gateway + 3 demo subsystems
    python3 dev.py test    # create .venv, install with dev extras, run the whole test suite

Extra arguments after the command go to `flowwatch-demo demo` or pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTEST_NO_TESTS_COLLECTED = 5


def ensure_venv(extras: str) -> None:
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f".{extras}"], check=True, cwd=ROOT)


def ensure_redis_server() -> None:
    """The shared-registry tests run a real redis-server: install Debian's when we may."""
    if shutil.which("redis-server"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing redis-server (apt-get) for the shared-registry tests", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "redis-server"], check=True, env=env)
        return
    print(
        "redis-server is not on PATH and this is not root, so the shared-registry (Redis) "
        "tests will be skipped. Install it first: `sudo apt-get install -y redis-server` "
        "(Debian/Ubuntu) or `brew install redis` (macOS).",
        file=sys.stderr,
        flush=True,
    )


def ensure_chromium() -> None:
    """The /status page is tested in headless Chromium: install Debian's browser and driver."""
    missing = [tool for tool in ("chromium", "chromedriver") if not shutil.which(tool)]
    if not missing:
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing chromium and chromium-driver (apt-get) for the status page tests")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium", "chromium-driver"], check=True, env=env
        )
        return
    print(
        f"{' and '.join(missing)} not on PATH and this is not root, so the status page's "
        "browser test will be skipped. Install them first: "
        "`sudo apt-get install -y chromium chromium-driver` (Debian/Ubuntu).",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs before the venv exists
        sys.exit("Python 3.11 or newer is required")
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "demo":
        ensure_venv("[server,demo]")
        return subprocess.call([str(BIN / "flowwatch-demo"), "demo", *rest], cwd=ROOT)
    if command == "test":
        ensure_venv("[dev]")
        ensure_redis_server()
        ensure_chromium()
        # -m "" also runs the tests marked slow, which a plain `pytest` skips.
        code = subprocess.call([str(BIN / "python"), "-m", "pytest", "-m", "", *rest], cwd=ROOT)
        if code == PYTEST_NO_TESTS_COLLECTED:
            print("pytest collected no tests: treating that as a failure", file=sys.stderr)
            return 1
        return code
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
