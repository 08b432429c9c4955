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


# Programs the tests drive, and the Debian packages that bring them: a real Redis for
# the shared registry, real headless Chromium for the status page.
TEST_PROGRAMS = {
    "redis-server": "redis-server",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def ensure_test_programs() -> None:
    """Install the Debian packages of missing test programs when we may (root, apt-get)."""
    missing = sorted({pkg for tool, pkg in TEST_PROGRAMS.items() if not shutil.which(tool)})
    if not missing:
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} (apt-get) for the tests", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
        return
    print(
        f"not on PATH and this is not root: {', '.join(missing)}; the tests that need them "
        f"(shared registry on Redis, the status page in Chromium) will be skipped. Install "
        f"them first: `sudo apt-get install -y {' '.join(missing)}` (Debian/Ubuntu).",
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
        ensure_test_programs()
        # -m "" also runs the tests marked slow, which a plain `pytest` skips.
        code = subprocess.call([str(BIN / "python"), "-m", "pytest", "-m", "", *rest], cwd=ROOT)
        if code == PYTEST_NO_TESTS_COLLECTED:
            print("pytest collected no tests: treating that as a failure", file=sys.stderr)
            return 1
        return code
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
