"""Real servers (uvicorn, pyvoy's command line) serving the apps of front_apps.py."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import httpx

from flowwatch_gateway.processes import Child, child_env, free_port
from tests.support.front_apps import ALLOWED_HOSTS_ENV
from tests.support.harness import ROOT

STARTUP_TIMEOUT = 30.0


class FrontServer(Child):
    """uvicorn or pyvoy serving `app` (`module:attr`) on a free loopback port, started.

    pyvoy listens for HTTP/1.1 and h2c prior knowledge; uvicorn for HTTP/1.1 only.
    """

    def __init__(self, server: str, app: str, allowed_hosts: str = "") -> None:
        self.port = free_port()
        if server == "uvicorn":
            command = [sys.executable, "-m", "uvicorn", app, "--log-level", "warning"]
        else:
            command = [str(Path(sys.executable).with_name("pyvoy")), app, "--worker-threads", "1"]
        env = child_env({ALLOWED_HOSTS_ENV: allowed_hosts, "PYTHONPATH": str(ROOT)})
        super().__init__(f"{server} {app}", [*command, "--port", str(self.port)], env=env, cwd=ROOT)
        self.start()
        try:
            self.wait_for(self._answers, STARTUP_TIMEOUT, "serving")
        except BaseException:
            self.close()
            raise

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1.0)
            return True
        return False
