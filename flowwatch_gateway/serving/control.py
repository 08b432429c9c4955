"""A private control channel from the supervising CLI process to the app inside Envoy.

Envoy resets every open stream as soon as it receives SIGTERM, before the ASGI
lifespan shutdown runs, so a DisconnectCommand sent from the lifespan never reaches
the subsystems. Instead the supervisor asks the app to drain over a Unix socket in a
private directory (reachable only by this user, independent of TLS/mTLS on the public
port), waits for the answer, and only then stops Envoy. The same channel carries
SIGHUP's "read the policy file again" to the app, which cannot install signal
handlers inside Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CONTROL_SOCKET_ENV = "FLOWWATCH_GATEWAY_CONTROL_SOCKET"
DRAIN_COMMAND = b"drain\n"
DRAINED_REPLY = b"drained\n"
RELOAD_COMMAND = b"reload\n"
RELOADED_REPLY = b"reloaded\n"
KEPT_REPLY = b"kept\n"


async def serve_control_socket(
    path: str,
    drain: Callable[[], Awaitable[None]],
    reload: Callable[[], bool] | None = None,
) -> asyncio.Server:
    """Listen on `path`; a `drain` line runs `drain()` and is answered with `drained`,
    a `reload` line runs `reload()` and is answered `reloaded` (or `kept`, when the
    new file was not taken)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = await reader.readline()
            if command == DRAIN_COMMAND:
                await drain()
                writer.write(DRAINED_REPLY)
            elif command == RELOAD_COMMAND and reload is not None:
                writer.write(RELOADED_REPLY if reload() else KEPT_REPLY)
            else:
                writer.write(b"unknown command\n")
            await writer.drain()
        except ConnectionError:
            log.debug("control client went away")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_unix_server(handle, path=path)


async def request_drain(path: str, within: float) -> bool:
    """Ask the app listening on `path` to drain; True once it confirms `within` seconds."""
    reply = await _ask(path, DRAIN_COMMAND, within, "drain the gateway before stopping")
    return reply == DRAINED_REPLY


async def request_reload(path: str, within: float = 5.0) -> bool:
    """Ask the app listening on `path` to read its policy file again; True when taken."""
    reply = await _ask(path, RELOAD_COMMAND, within, "ask the gateway to reload its policy")
    return reply == RELOADED_REPLY


async def _ask(path: str, command: bytes, within: float, what: str) -> bytes | None:
    """The app's one-line reply to `command`, or None (logged) when none came in time."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(command)
                await writer.drain()
                return await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("could not %s: %r", what, exc)
        return None
