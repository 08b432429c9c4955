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
from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_connect
from flowwatch_gateway.gen.flowwatch.v1.gateway_service_pb2 import (
    DisconnectCommand,
    GatewayMessage,
    Heartbeat,
    RegisterRequest,
    RegisterResponse,
    SubsystemMessage,
)
from flowwatch_gateway.registry.base import Registry, SubsystemInstance
from flowwatch_gateway.registry.endpoints import EndpointPolicy, endpoint_refusal, parse_host_rules
from flowwatch_gateway.registry.keys import ApiKeys, load_keys_file
from flowwatch_gateway.registry.validation import (
    REGISTER_READ_MAX_BYTES,
    takeover_refusal,
    validate_register_request,
)

log = logging.getLogger(__name__)

FIRST_MESSAGE_TIMEOUT_S = 10.0

REASON_REPLACED = "replaced by a newer registration of the same subsystem id"
REASON_EXPIRED = "registration expired: stale for longer than the grace period"
REASON_SHUTDOWN = "gateway shutting down"

# A refused takeover is logged once per (id, holder, claimant) in this window; the
# claimant retries for as long as both run, and one line says all there is to say.
REFUSAL_LOG_INTERVAL_S = 600.0
REFUSAL_LOG_MAX_PAIRS = 1024


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


class _Session:
    """One accepted Register stream; lets others ask it to send a disconnect and end."""

    def __init__(self, instance: SubsystemInstance) -> None:
        self.subsystem_id = instance.id
        self.epoch = instance.epoch
        self.close_reason: str | None = None
        self.error: ConnectError | None = None
        self.closing = asyncio.Event()
        self.finished = asyncio.Event()

    def close(self, reason: str | None) -> None:
        """Ask the stream to end; with a reason the subsystem first gets a DisconnectCommand."""
        if not self.closing.is_set():
            self.close_reason = reason
            self.closing.set()


class RegisterService(gateway_service_connect.GatewayService):
    """Implements GatewayService and follows registry removals to close dead streams."""

    def __init__(
        self,
        registry: Registry,
        config: GatewayConfig,
        *,
        endpoint_policy: EndpointPolicy | None = None,
    ) -> None:
        self._registry = registry
        entries = load_keys_file(config.api_keys_file) if config.api_keys_file else ()
        self._keys = ApiKeys(config.api_key, entries)
        self.endpoint_policy = endpoint_policy or EndpointPolicy.for_listener(
            config.host,
            config.port,
            allow=parse_host_rules(",".join(config.endpoint_allow)),
            deny=parse_host_rules(",".join(config.endpoint_deny)),
        )
        self._heartbeat = config.heartbeat
        self._sessions: dict[str, _Session] = {}
        self._draining = False
        self._refusals = _OncePerPair(REFUSAL_LOG_INTERVAL_S, REFUSAL_LOG_MAX_PAIRS)
        if self._keys.open:
            log.warning(
                "REGISTRATION IS OPEN TO ANYONE: no GATEWAY_API_KEY or GATEWAY_API_KEYS_FILE "
                "is set, so any client that reaches this port can register any subsystem id "
                "and receive its traffic, including actions. Set one of them outside a "
                "trusted development network."
            )

    # --- GatewayService --------------------------------------------------------------
    async def register(
        self,
        request: AsyncIterator[SubsystemMessage],
        ctx: RequestContext[SubsystemMessage, GatewayMessage],
    ) -> AsyncIterator[GatewayMessage]:
        try:
            async with asyncio.timeout(FIRST_MESSAGE_TIMEOUT_S):
                registration = await _first_register_request(request)
        except TimeoutError:
            # Unauthenticated until then: don't let a silent peer hold a handler open.
            raise ConnectError(
                Code.DEADLINE_EXCEEDED,
                f"no RegisterRequest within {FIRST_MESSAGE_TIMEOUT_S:g}s of opening the stream",
            ) from None
        if self._draining:
            raise ConnectError(
                Code.UNAVAILABLE, "the gateway is shutting down; register again shortly"
            )
        if not self._keys.accepts(registration.subsystem_id, registration.api_key):
            log.info(
                "subsystem rejected: id=%s name=%s endpoint=%s reason=invalid API key",
                registration.subsystem_id[:80],
                registration.subsystem_name[:80],
                registration.flowwatch_endpoint[:200],
            )
            yield GatewayMessage(
                registered=RegisterResponse(accepted=False, reject_reason="invalid API key")
            )
            raise ConnectError(Code.UNAUTHENTICATED, "invalid API key")
        validate_register_request(registration)
        endpoint = registration.flowwatch_endpoint
        refusal = await endpoint_refusal(self.endpoint_policy, endpoint)
        if refusal is not None:
            log.info(
                "subsystem rejected: id=%s endpoint=%s reason=%s",
                registration.subsystem_id,
                endpoint,
                refusal,
            )
            raise ConnectError(
                Code.PERMISSION_DENIED,
                f"RegisterRequest.flowwatch_endpoint {endpoint!r} is refused: {refusal}",
            )
        # Decided after the last await, so no registration can slip in between.
        holder = self._registry.get(registration.subsystem_id)
        conflict = takeover_refusal(holder, registration)
        if conflict is not None:
            assert holder is not None
            self._log_takeover_refused(holder, endpoint)
            yield GatewayMessage(
                registered=RegisterResponse(accepted=False, reject_reason=conflict)
            )
            raise ConnectError(Code.ALREADY_EXISTS, conflict)

        instance = self._registry.register(registration)
        session = self._open_session(instance)
        log.info(
            "subsystem registered: id=%s name=%s endpoint=%s registration=%s workflows=%d",
            instance.id,
            instance.name,
            instance.endpoint,
            instance.registration_id,
            len(instance.workflows),
        )
        reader = asyncio.create_task(self._read_pongs(request, session))
        try:
            yield GatewayMessage(
                registered=RegisterResponse(
                    accepted=True, heartbeat_interval=_duration(self._heartbeat)
                )
            )
            while not session.closing.is_set():
                # asyncio.timeout, not wait_for: no task made and cancelled per ping, which
                # with 1,000 streams was a tenth of the gateway's CPU.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await session.closing.wait()
                if not session.closing.is_set():
                    yield GatewayMessage(ping=Heartbeat(timestamp=_now()))
            if session.error is not None:
                raise session.error
            if session.close_reason is not None:
                yield GatewayMessage(disconnect=DisconnectCommand(reason=session.close_reason))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._end_session(session, instance)

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

    # --- internals -------------------------------------------------------------------
    def _log_takeover_refused(self, holder: SubsystemInstance, claimant: str) -> None:
        suppressed = self._refusals.should_log((holder.id, holder.endpoint, claimant))
        if suppressed is None:
            return
        log.warning(
            "subsystem rejected: id=%s endpoint=%s reason=id held by connected %s "
            "(%d more attempt(s) from this pair since the last report; reported at most "
            "every %.0fs)",
            holder.id,
            claimant,
            holder.endpoint,
            suppressed,
            REFUSAL_LOG_INTERVAL_S,
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
                instance.endpoint,
            )

    async def _read_pongs(
        self, request: AsyncIterator[SubsystemMessage], session: _Session
    ) -> None:
        """Record each pong; the stream ending (or failing) ends the session."""
        try:
            async for message in request:
                kind = message.WhichOneof("msg")
                if kind == "pong":
                    if not self._registry.record_heartbeat(session.subsystem_id, session.epoch):
                        session.close(REASON_EXPIRED)
                        return
                elif kind == "register":
                    session.error = ConnectError(
                        Code.FAILED_PRECONDITION,
                        "a second RegisterRequest on one Register stream: this stream is "
                        f"already registered as {session.subsystem_id!r}. To change the "
                        "registration, close the stream and open a new one",
                    )
                    session.close(None)
                    return
                else:
                    log.warning(
                        "ignoring %s on the register stream of %s: only pongs may follow "
                        "the RegisterRequest",
                        kind or "an empty message",
                        session.subsystem_id,
                    )
        except ConnectError as exc:
            log.debug("register stream of %s ended: %s", session.subsystem_id, exc)
        except Exception as exc:
            log.debug("register stream of %s failed: %r", session.subsystem_id, exc)
        session.close(None)


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
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def gateway_asgi_app(
    service: RegisterService,
) -> gateway_service_connect.GatewayServiceASGIApplication:
    """The Connect ASGI app for GatewayService, to be mounted at its `.path`."""
    return gateway_service_connect.GatewayServiceASGIApplication(
        service, read_max_bytes=REGISTER_READ_MAX_BYTES
    )
