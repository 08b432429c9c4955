"""A real redis-server for tests: its own process on a free loopback port, no persistence.

`dev.py test` installs Debian's redis-server where it is missing (as root); elsewhere
the tests that need it are skipped (`redis_server()`) with a message naming the package.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest

from flowwatch_gateway.processes import Child, child_env, free_port
from tests.support.harness import ROOT

STARTUP_TIMEOUT = 10.0
MISSING = (
    "redis-server is not installed: `python3 dev.py test` installs it as root "
    "(apt-get install -y redis-server); otherwise install Debian's redis-server"
)


class RedisServer(Child):
    """`redis-server` bound to 127.0.0.1 with persistence off; restartable (same port)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(MISSING)
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        super().__init__(f"redis-{self.port}", command, env=child_env(), cwd=ROOT)

    def start_ready(self) -> RedisServer:
        self.start()
        self.wait_for(self._answers_ping, STARTUP_TIMEOUT, "answering PING")
        return self

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def redis_server() -> Iterator[RedisServer]:
    """Generator for fixtures: a started server, stopped on teardown."""
    if shutil.which("redis-server") is None:
        pytest.skip(MISSING)
    server = RedisServer()
    with server:
        server.start_ready()
        yield server
