"""The subsystem side of GatewayService.Register: join a gateway and stay joined.

`connect_to_gateway` is what a Python FlowWatch subsystem runs next to its own
FlowWatch API: it dials the gateway over HTTP/2, announces itself (RegisterRequest),
answers every ping with a pong, and reconnects whenever the stream ends, until it is
cancelled. What it announces (workflows, capabilities, metadata) is read from the
subsystem's own FlowWatch API before every attempt unless the caller fixes it, so a
reconnect always shows the gateway the current state.

Retry policy (see `Backoff`): failures back off exponentially with full jitter (1 s
-> 30 s by default); a DisconnectCommand reconnects after a full-jitter delay in
[0, initial], so the subsystems of a drained gateway do not all arrive at its
successor in the same instant; a rejection (bad API key, bad registration) waits the
maximum delay every time, because retrying faster cannot fix it and would only load
the gateway.

connectrpc turns a cancelled call into ConnectError(CANCELED), so cancellation is
never delivered into a call here: the stream runs in a child task, and the cancelled
parent half-closes the stream (the gateway sees a clean end) before it re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pyqwest
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType

from flowwatch_gateway import exit_guard
from flowwatch_gateway.errors import REJECTION_CODES
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_connect, gateway_service_pb2
from flowwatch_gateway.subsystem.describe import SubsystemDescription, describe_local_subsystem
from flowwatch_gateway.subsystem.options import (
    ClientOptions,
    ClientStatus,
    ConnectionState,
    default_gateway_transport,
    default_local_transport,
)

__all__ = [
    "BackgroundConnection",
    "GatewayClient",
    "connect_to_gateway",
    "connect_to_gateway_in_thread",
]

log = logging.getLogger(__name__)
# Programs using this client exit through pyqwest's shutdown race (see exit_guard).
exit_guard.install()

# A gateway that stays silent for this many heartbeat intervals (plus slack for
# scheduling) is treated as gone, e.g. behind a half-open TCP connection.
MISSED_PINGS_BEFORE_RECONNECT = 3
SILENCE_SLACK_SECONDS = 1.0
# How long a cancelled client waits for the gateway to end the half-closed stream.
CLOSE_TIMEOUT_SECONDS = 2.0


# --- one Register stream ---------------------------------------------------------------------


class _Ending(Enum):
    REJECTED = "rejected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


@dataclass(frozen=True)
class _SessionResult:
    ending: _Ending
    reason: str
    stable: bool = False


@dataclass
class _StreamState:
    """What the reader task learned; the supervising coroutine decides from it."""

    started_at: float
    last_message_at: float
    accepted_at: float | None = None
    heartbeat_interval: float = 0.0
    ending: _Ending | None = None
    reason: str = ""

    def end(self, ending: _Ending, reason: str) -> None:
        """Record why the stream ended; the first reason wins."""
        if self.ending is None:
            self.ending, self.reason = ending, reason


class GatewayClient:
    """Holds one subsystem's registration with a gateway; `run()` until cancelled."""

    def __init__(self, options: ClientOptions, *, rng: random.Random | None = None) -> None:
        self.options = options
        self._rng = rng or random.Random()
        self._status = ClientStatus(ConnectionState.STOPPED)
        self._attempt = 0

    @property
    def status(self) -> ClientStatus:
        return self._status

    async def run(self) -> None:
        """Register, keep the stream alive, reconnect; returns only by cancellation."""
        options = self.options
        backoff = options.backoff
        failures = 0
        try:
            while True:
                self._attempt += 1
                self._set_status(ClientStatus(ConnectionState.CONNECTING, self._attempt))
                result = await self._one_connection()
                if result.stable:
                    failures = 0
                if result.ending is _Ending.REJECTED:
                    delay = backoff.maximum
                    log.warning(
                        "gateway %s rejected subsystem %s: %s; trying again in %.1fs",
                        options.gateway_url,
                        options.subsystem_id,
                        result.reason,
                        delay,
                    )
                    self._set_status(
                        ClientStatus(ConnectionState.REJECTED, self._attempt, result.reason)
                    )
                elif result.ending is _Ending.DISCONNECTED:
                    delay = backoff.disconnect_delay(self._rng)
                    log.info(
                        "gateway %s disconnected subsystem %s: %s; reconnecting in %.2fs",
                        options.gateway_url,
                        options.subsystem_id,
                        result.reason,
                        delay,
                    )
                else:
                    delay = backoff.failure_delay(failures, self._rng)
                    failures += 1
                    log.warning(
                        "connection of subsystem %s to gateway %s failed: %s; "
                        "reconnecting in %.2fs",
                        options.subsystem_id,
                        options.gateway_url,
                        result.reason,
                        delay,
                    )
                self._set_status(
                    ClientStatus(
                        ConnectionState.BACKING_OFF, self._attempt, result.reason, delay=delay
                    )
                )
                await asyncio.sleep(delay)
        finally:
            self._set_status(ClientStatus(ConnectionState.STOPPED, self._attempt))

    def _set_status(self, status: ClientStatus) -> None:
        self._status = status
        callback = self.options.on_state_change
        if callback is None:
            return
        try:
            callback(status)
        except Exception:
            log.exception("on_state_change callback failed; ignoring")

    async def _one_connection(self) -> _SessionResult:
        """Describe the subsystem, then hold one Register stream until it ends."""
        options = self.options
        async with contextlib.AsyncExitStack() as stack:
            local_client = options.local_http_client
            if local_client is None:
                transport = default_local_transport()
                stack.push_async_callback(transport.aclose)
                local_client = pyqwest.Client(transport)
            try:
                description = await describe_local_subsystem(options, local_client)
            except ConnectError as exc:
                _raise_if_cancelling()
                return _SessionResult(
                    _Ending.FAILED,
                    f"local FlowWatch API at {options.local_endpoint} failed: "
                    f"{exc.code.name.lower()}: {exc.message}",
                )
            gateway_client = options.http_client
            if gateway_client is None:
                # A fresh connection per attempt: never reuse one that may be half-dead.
                transport = default_gateway_transport(options.gateway_url)
                stack.push_async_callback(transport.aclose)
                gateway_client = pyqwest.Client(transport)
            return await self._hold_stream(gateway_client, self._register_request(description))

    def _register_request(
        self, description: SubsystemDescription
    ) -> gateway_service_pb2.RegisterRequest:
        options = self.options
        request = gateway_service_pb2.RegisterRequest(
            subsystem_id=options.subsystem_id,
            subsystem_name=description.name,
            description=description.description,
            api_key=options.api_key,
            flowwatch_endpoint=options.local_endpoint,
            workflows=description.workflows,
            metadata=description.metadata,
        )
        if description.capabilities is not None:
            request.capabilities.CopyFrom(description.capabilities)
        return request

    async def _hold_stream(
        self, http_client: pyqwest.Client, request: gateway_service_pb2.RegisterRequest
    ) -> _SessionResult:
        outgoing: asyncio.Queue[gateway_service_pb2.SubsystemMessage | None] = asyncio.Queue()
        outgoing.put_nowait(gateway_service_pb2.SubsystemMessage(register=request))
        now = time.monotonic()
        state = _StreamState(started_at=now, last_message_at=now)
        client = gateway_service_connect.GatewayServiceClient(
            self.options.gateway_url.rstrip("/"),
            http_client=http_client,
            protocol=ProtocolType.CONNECT,
            send_compression=None,
        )
        reader = asyncio.create_task(
            self._read_stream(client, outgoing, state), name="flowwatch-register-stream"
        )
        try:
            await self._watch(reader, state)
        except asyncio.CancelledError:
            # Half-close so the gateway sees the stream end, give it a moment to finish.
            outgoing.put_nowait(None)
            await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT_SECONDS)
            raise
        finally:
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        accepted_at = state.accepted_at
        stable = (
            accepted_at is not None
            and time.monotonic() - accepted_at >= self.options.backoff.stable_after
        )
        return _SessionResult(
            state.ending or _Ending.FAILED, state.reason or "stream ended", stable=stable
        )

    async def _watch(self, reader: asyncio.Task[None], state: _StreamState) -> None:
        """Wait for the stream to end; cut it if the gateway goes silent."""
        while not reader.done():
            if state.accepted_at is None:
                deadline = state.started_at + self.options.register_timeout
                silence = f"no RegisterResponse within {self.options.register_timeout:g}s"
            elif state.heartbeat_interval > 0:
                limit = (
                    MISSED_PINGS_BEFORE_RECONNECT * state.heartbeat_interval + SILENCE_SLACK_SECONDS
                )
                deadline = state.last_message_at + limit
                silence = f"no ping from the gateway for {limit:g}s"
            else:
                await asyncio.wait({reader})
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state.end(_Ending.FAILED, silence)
                reader.cancel()
                return
            await asyncio.wait({reader}, timeout=remaining)

    async def _read_stream(
        self,
        client: gateway_service_connect.GatewayServiceClient,
        outgoing: asyncio.Queue[gateway_service_pb2.SubsystemMessage | None],
        state: _StreamState,
    ) -> None:
        async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
            while (message := await outgoing.get()) is not None:
                yield message

        responses = client.register(requests())
        try:
            async for message in responses:
                state.last_message_at = time.monotonic()
                if self._handle(message, outgoing, state):
                    return
            state.end(_Ending.FAILED, "the gateway ended the register stream")
        except ConnectError as exc:
            if exc.code in REJECTION_CODES and state.accepted_at is None:
                state.end(_Ending.REJECTED, exc.message)
            else:
                state.end(_Ending.FAILED, f"{exc.code.name.lower()}: {exc.message}")
        except Exception as exc:
            state.end(_Ending.FAILED, repr(exc))
        finally:
            if isinstance(responses, AsyncGenerator):
                # Leaving early: release the HTTP stream now, not whenever GC runs.
                with contextlib.suppress(Exception):
                    await responses.aclose()

    def _handle(
        self,
        message: gateway_service_pb2.GatewayMessage,
        outgoing: asyncio.Queue[gateway_service_pb2.SubsystemMessage | None],
        state: _StreamState,
    ) -> bool:
        """Act on one gateway message; True when the stream should be left at once."""
        kind = message.WhichOneof("msg")
        if kind == "ping":
            pong = gateway_service_pb2.SubsystemMessage()
            pong.pong.timestamp.CopyFrom(message.ping.timestamp)
            outgoing.put_nowait(pong)
        elif kind == "registered":
            registered = message.registered
            if not registered.accepted:
                state.end(_Ending.REJECTED, registered.reject_reason or "registration rejected")
                return True
            state.accepted_at = time.monotonic()
            state.heartbeat_interval = registered.heartbeat_interval.ToTimedelta().total_seconds()
            log.info(
                "subsystem %s registered with gateway %s (heartbeat %gs)",
                self.options.subsystem_id,
                self.options.gateway_url,
                state.heartbeat_interval,
            )
            self._set_status(
                ClientStatus(
                    ConnectionState.CONNECTED,
                    self._attempt,
                    heartbeat_interval=state.heartbeat_interval,
                )
            )
        elif kind == "disconnect":
            state.end(_Ending.DISCONNECTED, message.disconnect.reason or "disconnected")
            # Nothing more to say; the gateway ends its side after the command.
            outgoing.put_nowait(None)
        else:
            log.warning("ignoring an unknown message on the register stream: %s", kind)
        return False


def _raise_if_cancelling() -> None:
    """connectrpc reports our own cancellation as ConnectError(CANCELED): restore it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def connect_to_gateway(options: ClientOptions | None = None, **overrides: Any) -> None:
    """Keep this subsystem registered with a gateway until the calling task is cancelled.

    Pass a ClientOptions, keyword arguments naming its fields, or both (keywords
    override). Cancellation half-closes the Register stream and re-raises.
    """
    if options is None:
        options = ClientOptions(**overrides)
    elif overrides:
        options = dataclasses.replace(options, **overrides)
    await GatewayClient(options).run()


# --- for programs without an event loop ------------------------------------------------------


class BackgroundConnection:
    """A GatewayClient on its own event loop in a daemon thread; `stop()` ends it.

    `on_state_change` is called on that thread.
    """

    def __init__(self, options: ClientOptions) -> None:
        self.client = GatewayClient(options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"flowwatch-gateway-{options.subsystem_id}", daemon=True
        )
        self._thread.start()
        self._started.wait()

    @property
    def status(self) -> ClientStatus:
        return self.client.status

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.client.run()

        try:
            asyncio.run(main())
        finally:
            self._started.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel the client (closing its stream) and wait; True if the thread ended."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop finished meanwhile
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)
        return not self._thread.is_alive()


def connect_to_gateway_in_thread(
    options: ClientOptions | None = None, **overrides: Any
) -> BackgroundConnection:
    """connect_to_gateway for synchronous programs: runs in a background thread."""
    if options is None:
        options = ClientOptions(**overrides)
    elif overrides:
        options = dataclasses.replace(options, **overrides)
    return BackgroundConnection(options)
