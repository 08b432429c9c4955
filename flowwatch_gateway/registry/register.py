"""GatewayService.Register: the long-lived stream through which subsystems join the gateway.

One stream per subsystem connection. After the RegisterRequest is accepted the gateway
pings every heartbeat interval while a reader task records the pongs: both directions
run at the same time (full duplex over HTTP/2). When the stream ends for any reason the
subsystem becomes stale, unless a newer registration of the same id has replaced it
(the registry's epoch decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flowwatch_gateway.api.compression import FastGzip
from flowwatch_gateway.errors import from_python_exception
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_connect
from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import (
    DisconnectCommand,
    GatewayMessage,
    Heartbeat,
    RegisterRequest,
    RegisterResponse,
    SubsystemMessage,
)
from flowwatch_gateway.log_limit import LogLimit
from flowwatch_gateway.registry.base import Registry, SubsystemInstance
from flowwatch_gateway.registry.endpoints import EndpointPolicy, endpoint_refusal
from flowwatch_gateway.registry.keys import ApiKeys
from flowwatch_gateway.registry.validation import (
    REGISTER_READ_MAX_BYTES,
    takeover_refusal,
    validate_register_request,
)
from flowwatch_gateway.timers import call_on_grid, wake
from flowwatch_gateway.urls import redact_url

log = logging.getLogger(__name__)

FIRST_MESSAGE_TIMEOUT_S = 10.0
MAX_UNANSWERED_PINGS = 8

REASON_REPLACED = "replaced by a newer registration of the same subsystem id"
REASON_EXPIRED = "registration expired: stale for longer than the grace period"
REASON_SHUTDOWN = "gateway shutting down"
UNREADABLE_FIRST_MESSAGE = (
    "the first message on the Register stream could not be read as a SubsystemMessage: "
    "send SubsystemMessage{register: ...} encoded as the content type says"
)

# A refused takeover is logged once per (id, holder, claimant) in this window; the
# claimant retries for as long as both run, and one line says all there is to say.
REFUSAL_LOG_INTERVAL_S = 600.0
REFUSAL_LOG_MAX_PAIRS = 1024
# Other refusals (bad key, bad request, refused endpoint, ...) are logged once per
# (reason, subsystem id, peer) in this window, with the count of those left out: a
# misconfigured subsystem retries forever and must not flood the log.
REJECTION_LOG_INTERVAL_S = 60.0
# Those keys include the claimed id, which costs a client nothing to vary: every
# refusal line also needs room in these per-peer and overall budgets per window (the
# rest are counted in one summary line).
REJECTION_LINES_PER_PEER = 5
REJECTION_LINES_TOTAL = 20
REJECTION_LINES_WINDOW_S = 60.0


class _OncePerPair:
    """Rate-limits a log line per key; remembers a bounded number of keys."""

    def __init__(self, interval: float, max_keys: int) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._last: OrderedDict[tuple[str, ...], tuple[float, int]] = OrderedDict()

    def should_log(self, key: tuple[str, ...]) -> int | None:
        """None to stay quiet; otherwise how many attempts were suppressed since last time."""
        now = time.monotonic()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return 0 if seen is None else seen[1]


class RegisterObserver(Protocol):
    """Told about registration outcomes and heartbeats (the gateway's metrics)."""

    def registration(self, result: str) -> None:
        """`accepted`, or one of REJECTION_LABELS."""

    def heartbeat(self, rtt_seconds: float) -> None:
        """A pong answered the ping sent `rtt_seconds` ago."""


# Bounded reason labels for refused registrations, by the code they were refused with.
_REJECTION_LABELS = {
    Code.UNAUTHENTICATED: "invalid_api_key",
    Code.INVALID_ARGUMENT: "invalid_argument",
    Code.PERMISSION_DENIED: "permission_denied",
    Code.ALREADY_EXISTS: "already_exists",
    Code.UNAVAILABLE: "draining",
    Code.DEADLINE_EXCEEDED: "timeout",
}
REJECTION_LABELS = (*dict.fromkeys(_REJECTION_LABELS.values()), "other")


def rejection_label(code: Code) -> str:
    return _REJECTION_LABELS.get(code, "other")


class _Rejection(Exception):
    """A refused registration: the error to end the stream with, and what to log.

    `answer`, when set, is sent as RegisterResponse.reject_reason before the error;
    `detail` is the log text (None: already logged where it was decided).
    `log_key` decides which refusals share one rate-limited log line.
    """

    def __init__(
        self,
        error: ConnectError,
        registration: RegisterRequest | None,
        detail: str | None,
        *,
        answer: str | None = None,
        log_key: tuple[str, ...] = (),
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.registration = registration
        self.detail = detail
        self.answer = answer
        self.log_key = log_key
        self.reason = rejection_label(error.code)


# Pings of all streams leave on a shared grid of this fraction of the heartbeat.
PING_GRID_FRACTION = 0.1


class _Session:
    """One accepted Register stream; lets others ask it to send a disconnect and end."""

    def __init__(self, instance: SubsystemInstance) -> None:
        self.subsystem_id = instance.id
        self.epoch = instance.epoch
        self.close_reason: str | None = None
        self.error: ConnectError | None = None
        self.closing = asyncio.Event()
        self.finished = asyncio.Event()
        self._tick: asyncio.Future[None] | None = None
        # Monotonic send time of the pings not answered yet, by their timestamp (which
        # the pong echoes); bounded, since a silent subsystem never answers.
        self._pings: OrderedDict[tuple[int, int], float] = OrderedDict()

    def ping_sent(self) -> Timestamp:
        stamp = _now()
        self._pings[(stamp.seconds, stamp.nanos)] = time.monotonic()
        while len(self._pings) > MAX_UNANSWERED_PINGS:
            self._pings.popitem(last=False)
        return stamp

    def pong_received(self, echoed: Timestamp) -> float | None:
        """Round trip of the ping this pong answers; None when that cannot be told.

        The pong names its ping by echoing the timestamp (the SDK does). A client that
        sends its own time instead is still measured while exactly one ping is
        unanswered, since pongs answer pings one for one.
        """
        sent = self._pings.pop((echoed.seconds, echoed.nanos), None)
        if sent is None and len(self._pings) == 1:
            sent = self._pings.popitem()[1]
        return None if sent is None else time.monotonic() - sent

    def close(self, reason: str | None) -> None:
        """Ask the stream to end; with a reason the subsystem first gets a DisconnectCommand."""
        if not self.closing.is_set():
            self.close_reason = reason
            self.closing.set()
            wake(self._tick)

    async def next_ping(self, interval: float) -> bool:
        """Wait `interval` or until closed; whether a ping is due (False: closing).

        A plain future and a timer that resolves it: with 1,000 streams at a 1 s
        heartbeat, a timeout that cancels a wait raised and caught an exception a
        thousand times a second.
        """
        if self.closing.is_set():
            return False
        loop = asyncio.get_running_loop()
        tick = self._tick = loop.create_future()
        timer = call_on_grid(loop, interval, interval * PING_GRID_FRACTION, wake, tick)
        try:
            await tick
        finally:
            timer.cancel()
            self._tick = None
        return not self.closing.is_set()


class RegisterService(gateway_service_connect.GatewayService):
    """Implements GatewayService and follows registry removals to close dead streams."""

    def __init__(
        self,
        registry: Registry,
        *,
        keys: ApiKeys,
        endpoint_policy: EndpointPolicy,
        heartbeat: float,
        observer: RegisterObserver | None = None,
    ) -> None:
        """Settings come as values (serving/app.py reads them from the configuration)."""
        self._registry = registry
        self._observer = observer
        self._keys = keys
        self.endpoint_policy = endpoint_policy
        self._heartbeat = heartbeat
        self._sessions: dict[str, _Session] = {}
        self._draining = False
        self._refusals = _OncePerPair(REFUSAL_LOG_INTERVAL_S, REFUSAL_LOG_MAX_PAIRS)
        self._rejections = _OncePerPair(REJECTION_LOG_INTERVAL_S, REFUSAL_LOG_MAX_PAIRS)
        self._rejection_lines = LogLimit(
            log,
            "registration refusals",
            per_source=REJECTION_LINES_PER_PEER,
            total=REJECTION_LINES_TOTAL,
            window_s=REJECTION_LINES_WINDOW_S,
        )
        if self._keys.open:
            log.warning(
                "REGISTRATION IS OPEN TO ANYONE: no GATEWAY_API_KEY or GATEWAY_API_KEYS_FILE "
                "is set, so any client that reaches this port can register any subsystem id "
                "and receive its traffic, including actions. Set one of them outside a "
                "trusted development network."
            )

    # --- GatewayService --------------------------------------------------------------
    def register(
        self,
        request: AsyncIterator[SubsystemMessage],
        ctx: RequestContext[SubsystemMessage, GatewayMessage],
    ) -> AsyncIterator[GatewayMessage]:
        # In-process callers (tests) may pass no context; a server always does.
        return self.serve(request, (ctx.client_address if ctx is not None else None) or "")

    async def serve(
        self, request: AsyncIterator[SubsystemMessage], peer: str
    ) -> AsyncGenerator[GatewayMessage]:
        """One Register stream from `peer` (its address, for the logs), whoever frames it."""
        try:
            registration = await self._admit(request, peer)
        except _Rejection as rejection:
            self._rejected(rejection, peer)
            if rejection.answer is not None:
                yield GatewayMessage(
                    registered=RegisterResponse(accepted=False, reject_reason=rejection.answer)
                )
            raise rejection.error from None

        instance = self._registry.register(registration)
        session = self._open_session(instance)
        if self._observer is not None:
            self._observer.registration("accepted")
        log.info(
            "subsystem registered: id=%s name=%s endpoint=%s registration=%s workflows=%d",
            instance.id,
            instance.name,
            redact_url(instance.endpoint),
            instance.registration_id,
            len(instance.workflows),
            extra=instance.log_fields,
        )
        reader = asyncio.create_task(self._read_pongs(request, session))
        try:
            yield GatewayMessage(
                registered=RegisterResponse(
                    accepted=True, heartbeat_interval=_duration(self._heartbeat)
                )
            )
            while await session.next_ping(self._heartbeat):
                yield GatewayMessage(ping=Heartbeat(timestamp=session.ping_sent()))
            if session.error is not None:
                raise session.error
            if session.close_reason is not None:
                yield GatewayMessage(disconnect=DisconnectCommand(reason=session.close_reason))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._end_session(session, instance)

    async def _admit(self, request: AsyncIterator[SubsystemMessage], peer: str) -> RegisterRequest:
        """The first RegisterRequest if it may register; otherwise raises _Rejection.

        Decided after the last await, so no registration can slip in between this
        and the caller's registry.register.
        """
        try:
            async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT_S):
                registration = await _first_register_request(request)
        except TimeoutError:
            # Unauthenticated until then: don't let a silent peer hold a handler open.
            message = (
                f"no RegisterRequest within {FIRST_MESSAGE_TIMEOUT_S:g}s of opening the stream"
            )
            raise _Rejection(ConnectError(Code.DEADLINE_EXCEEDED, message), None, message) from None
        except ConnectError as exc:
            error = exc
            if from_python_exception(exc):  # e.g. protobuf's words for bytes that do not decode
                error = ConnectError(exc.code, UNREADABLE_FIRST_MESSAGE)
            raise _Rejection(error, None, exc.message) from None
        if self._draining:
            raise _Rejection(
                ConnectError(
                    Code.UNAVAILABLE, "the gateway is shutting down; register again shortly"
                ),
                registration,
                "gateway draining",
            )
        if not self._keys.accepts(registration.subsystem_id, registration.api_key):
            error = ConnectError(Code.UNAUTHENTICATED, "invalid API key")
            raise _Rejection(error, registration, "invalid API key", answer="invalid API key")
        try:
            validate_register_request(registration)
        except ConnectError as exc:
            raise _Rejection(exc, registration, exc.message) from None
        endpoint = registration.flowwatch_endpoint
        refusal = await endpoint_refusal(self.endpoint_policy, endpoint)
        if refusal is not None:
            error = ConnectError(
                Code.PERMISSION_DENIED,
                f"RegisterRequest.flowwatch_endpoint {redact_url(endpoint)!r} is refused: "
                f"{refusal}",
            )
            raise _Rejection(error, registration, refusal)
        holder = self._registry.get(registration.subsystem_id)
        conflict = takeover_refusal(holder, registration)
        if conflict is not None:
            assert holder is not None
            self._log_takeover_refused(holder, endpoint, peer)
            error = ConnectError(Code.ALREADY_EXISTS, conflict)
            raise _Rejection(error, registration, None, answer=conflict)
        return registration

    def _rejected(self, rejection: _Rejection, peer: str) -> None:
        """Count a refusal and log it, at most once per (reason, id, peer host) a minute."""
        if self._observer is not None:
            self._observer.registration(rejection.reason)
        if rejection.detail is None:
            return  # logged where it was decided
        registration = rejection.registration or RegisterRequest()
        subsystem_id = registration.subsystem_id[:80]
        peer_host = _peer_host(peer)
        suppressed = self._rejections.should_log((rejection.reason, subsystem_id, peer_host))
        if suppressed is None or not self._rejection_lines.admit(peer_host):
            return
        log.info(
            "subsystem rejected: id=%s name=%s endpoint=%s peer=%s reason=%s%s",
            subsystem_id,
            registration.subsystem_name[:80],
            redact_url(registration.flowwatch_endpoint)[:200],
            peer_host,
            rejection.detail[:300],
            f" ({suppressed} more attempt(s) since the last report; reported at most every "
            f"{REJECTION_LOG_INTERVAL_S:.0f}s)"
            if suppressed
            else "",
            extra={"subsystem_id": subsystem_id, "reason": rejection.reason, "peer": peer_host},
        )

    # --- RegistryListener ------------------------------------------------------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        """Nothing to do: the Register handler itself opened the session."""

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        """A hung subsystem removed after the grace period still holds a stream: end it."""
        session = self._sessions.get(instance.id)
        if session is not None and session.epoch == instance.epoch:
            session.close(REASON_EXPIRED)

    def disconnect(self, subsystem_id: str, epoch: int, reason: str) -> None:
        """End that registration's stream with a DisconnectCommand, if it is open here.

        The shared registry calls this when another replica took the id over.
        """
        session = self._sessions.get(subsystem_id)
        if session is not None and session.epoch == epoch:
            session.close(reason)

    # --- shutdown --------------------------------------------------------------------
    @property
    def open_streams(self) -> int:
        return len(self._sessions)

    def start_draining(self) -> None:
        """From now on refuse registrations: a subsystem told to leave must not rejoin here."""
        self._draining = True

    async def disconnect_all(self, reason: str, *, flush_timeout: float) -> None:
        """Send every connected subsystem a DisconnectCommand and wait for the streams to end.

        Waiting (bounded by `flush_timeout`) lets the messages reach the subsystems
        before the server closes the connections.
        """
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close(reason)
        if sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.finished.wait() for s in sessions)), flush_timeout
                )
        log.info("disconnected %d subsystem stream(s): %s", len(sessions), reason)
        self._rejection_lines.flush(now=True)  # what was held back, before the log ends

    # --- internals -------------------------------------------------------------------
    def _log_takeover_refused(self, holder: SubsystemInstance, claimant: str, peer: str) -> None:
        suppressed = self._refusals.should_log((holder.id, holder.endpoint, claimant))
        if suppressed is None or not self._rejection_lines.admit(_peer_host(peer)):
            return
        log.warning(
            "subsystem rejected: id=%s endpoint=%s reason=id held by connected %s "
            "(%d more attempt(s) from this pair since the last report; reported at most "
            "every %.0fs)",
            holder.id,
            redact_url(claimant),
            redact_url(holder.endpoint),
            suppressed,
            REFUSAL_LOG_INTERVAL_S,
            extra={"subsystem_id": holder.id, "reason": "already_exists"},
        )

    def _open_session(self, instance: SubsystemInstance) -> _Session:
        previous = self._sessions.get(instance.id)
        if previous is not None:
            previous.close(REASON_REPLACED)
        session = _Session(instance)
        self._sessions[instance.id] = session
        return session

    def _end_session(self, session: _Session, instance: SubsystemInstance) -> None:
        if self._sessions.get(session.subsystem_id) is session:
            del self._sessions[session.subsystem_id]
        session.finished.set()
        if self._registry.mark_stale(session.subsystem_id, session.epoch):
            log.info(
                "subsystem stale: id=%s name=%s endpoint=%s reason=register stream ended",
                instance.id,
                instance.name,
                redact_url(instance.endpoint),
                extra=instance.log_fields,
            )

    async def _read_pongs(
        self, request: AsyncIterator[SubsystemMessage], session: _Session
    ) -> None:
        """Record each pong; the stream ending (or failing) ends the session."""
        ignored = False  # one line per stream, however many such messages it sends
        try:
            async for message in request:
                kind = message.WhichOneof("msg")
                if kind == "pong":
                    if not self._registry.record_heartbeat(session.subsystem_id, session.epoch):
                        session.close(REASON_EXPIRED)
                        return
                    rtt = session.pong_received(message.pong.timestamp)
                    if rtt is not None and self._observer is not None:
                        self._observer.heartbeat(rtt)
                elif kind == "register":
                    session.error = ConnectError(
                        Code.FAILED_PRECONDITION,
                        "a second RegisterRequest on one Register stream: this stream is "
                        f"already registered as {session.subsystem_id!r}. To change the "
                        "registration, close the stream and open a new one",
                    )
                    session.close(None)
                    return
                elif not ignored:
                    ignored = True
                    log.warning(
                        "ignoring %s on the register stream of %s: only pongs may follow "
                        "the RegisterRequest (said once per stream)",
                        kind or "an empty message",
                        session.subsystem_id,
                    )
        except ConnectError as exc:
            log.debug("register stream of %s ended: %s", session.subsystem_id, exc)
        except Exception as exc:
            log.debug("register stream of %s failed: %r", session.subsystem_id, exc)
        session.close(None)


def _peer_host(peer: str) -> str:
    """The address without the source port, which changes on every attempt."""
    return peer.rsplit(":", 1)[0]


async def _first_register_request(request: AsyncIterator[SubsystemMessage]) -> RegisterRequest:
    try:
        first = await anext(request)
    except StopAsyncIteration:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            "the Register stream ended before a RegisterRequest: send "
            "SubsystemMessage{register: ...} as the first message",
        ) from None
    kind = first.WhichOneof("msg")
    if kind != "register":
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"expected a RegisterRequest as the first message on the Register stream, "
            f"got {kind or 'an empty message'}",
        )
    return first.register


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _now() -> Timestamp:
    # time_ns, not Timestamp.GetCurrentTime (which goes through datetime): one per ping.
    nanos = time.time_ns()
    return Timestamp(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def gateway_asgi_app(
    service: RegisterService,
) -> gateway_service_connect.GatewayServiceASGIApplication:
    """The Connect ASGI app for GatewayService, to be mounted at its `.path`."""
    return gateway_service_connect.GatewayServiceASGIApplication(
        service, read_max_bytes=REGISTER_READ_MAX_BYTES, compressions=[FastGzip()]
    )
