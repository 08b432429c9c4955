"""The gateway -> subsystem leg: generated Connect clients over shared transports.

connectrpc's generated clients over pyqwest measured 3-20x more calls/s than httpx
on this hot path (see README), so they are used here; httpx stays for tests and
tools. Every subsystem's clients share one pyqwest transport per HTTP mode (a
transport pools connections per host): a thousand subsystems, or a subsystem
retried for hours, cost client objects, not transports. An endpoint given by name
is the exception: it goes through a transport pinned to the address just checked
(GuardedTransport), since pyqwest would otherwise resolve the name again.

Binary protobuf, no compression either way, and a cap on the size of any reply
(capped_response, the one place every answer is read through): requests are small, and
a subsystem deflating a page of 50 runs (10 kB) spent longer on it (about 180 µs)
than a 1 Gbit/s link takes to carry the whole page (80 µs), and the gateway then
spent more undoing it.

Plaintext endpoints are tried with HTTP/2 prior knowledge (h2c) first and fall back
to HTTP/1.1 when the subsystem does not speak it; https endpoints negotiate via ALPN.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import pyqwest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.interceptor import Interceptor
from connectrpc.protocol import ProtocolType

from flowwatch_gateway import exit_guard
from flowwatch_gateway.errors import NEGOTIATION_FAILURE_CODES, ReplyTooLarge, UpstreamUnreached
from flowwatch_gateway.gen.flowwatch.v1 import (
    analytics_service_connect,
    run_service_connect,
    search_service_connect,
    stream_service_connect,
    workflow_service_connect,
    workflow_service_pb2,
)
from flowwatch_gateway.registry.endpoints import (
    EndpointChecker,
    dial_text,
    endpoint_host_port,
    is_ip_literal,
    resolve,
)
from flowwatch_gateway.timers import wake

log = logging.getLogger(__name__)
exit_guard.install()

HttpMode = Literal["h2c", "http1", "tls"]

PROBE_TIMEOUT_MS = 3000
LISTEN_CHECK_TIMEOUT_S = 3.0
# The largest reply accepted from a subsystem: a page of 100 runs with steps fits many
# times over, and one misbehaving subsystem cannot make the gateway buffer gigabytes.
READ_MAX_BYTES = 16 * 1024 * 1024


# Connect (and gRPC) streams frame each message with a 5-byte prefix: flags, length.
_ENVELOPED_TYPES = ("application/connect+", "application/grpc")
_PREFIX = 5


def too_large(limit: int = READ_MAX_BYTES) -> ReplyTooLarge:
    return ReplyTooLarge(
        Code.RESOURCE_EXHAUSTED, f"the subsystem's reply is larger than the limit of {limit} bytes"
    )


class _EnvelopeCap:
    """Follows the message boundaries of an enveloped body as its bytes go past.

    Only lengths are tracked (no bytes are kept), so a declared length over the cap
    fails as soon as its prefix is seen, and a message can never bring more bytes than
    it declared without the next prefix being read from them.
    """

    __slots__ = ("_left", "_limit", "_prefix")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._prefix = bytearray()
        self._left = 0  # bytes of the current message still to come

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        at, size = 0, len(view)
        while at < size:
            if self._left:
                step = min(self._left, size - at)
                self._left -= step
                at += step
                continue
            part = view[at : at + _PREFIX - len(self._prefix)]
            self._prefix += part
            at += len(part)
            if len(self._prefix) == _PREFIX:
                length = int.from_bytes(self._prefix[1:], "big")
                self._prefix.clear()
                if length > self._limit:
                    raise too_large(self._limit)
                self._left = length


async def capped_response(
    response: pyqwest.Response, *, stream: bool = False, limit: int = READ_MAX_BYTES
) -> pyqwest.Response:
    """`response` with its body bounded: the one rule for every reply from a subsystem.

    A unary body, or any answer to a stream that is not a stream of messages (an
    error), is read here, refused past `limit` as it arrives (read_capped), and handed
    on whole; a successful stream is passed on chunk by chunk as it arrives, each
    message capped by its declared length (a stream may live for hours, so not as a
    whole). Cut off, closed early or failed, the underlying response is closed, which
    drops its connection (HTTP/1.1) or resets its stream (HTTP/2), so the subsystem
    cannot keep sending. Trailers are not carried over (the Connect protocol has none).
    """
    enveloped = (
        stream
        and response.status == 200
        and (response.headers.get("content-type") or "").startswith(_ENVELOPED_TYPES)
    )
    content: bytes | _CappedStream = (
        _CappedStream(response, limit) if enveloped else await read_capped(response, limit)
    )
    return pyqwest.Response(
        status=response.status,
        http_version=response.http_version,
        headers=response.headers,
        content=content,
    )


async def read_capped(response: pyqwest.Response, limit: int = READ_MAX_BYTES) -> bytes:
    """A raw answer's whole body, refused with ReplyTooLarge past `limit` as it arrives."""
    body = bytearray()
    try:
        async for chunk in response.content:
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except BaseException:
        # The failure's traceback keeps this frame alive (for as long as the error is
        # referenced, or until a garbage collection breaks a cycle): not the bytes too.
        del body
        await response.aclose()  # a body read to its end needs no closing
        raise
    return bytes(body)


class _CappedStream:
    """A stream's body, message by message within the cap; closing it (as every reader
    does when done, failed or gone) closes the response underneath, even before the
    first chunk was asked for."""

    __slots__ = ("_chunks", "_envelopes", "_response")

    def __init__(self, response: pyqwest.Response, limit: int) -> None:
        self._response = response
        self._chunks = aiter(response.content)
        self._envelopes = _EnvelopeCap(limit)

    def __aiter__(self) -> _CappedStream:
        return self

    async def __anext__(self) -> bytes | bytearray | memoryview:
        try:
            chunk = await anext(self._chunks)
            self._envelopes.feed(chunk)
        except StopAsyncIteration:
            raise
        except BaseException:
            await self.aclose()
            raise
        return chunk

    async def aclose(self) -> None:
        await self._response.aclose()


def _transport(
    mode: HttpMode, dns_overrides: dict[str, list[str]] | None = None
) -> pyqwest.HTTPTransport:
    if mode == "h2c":
        version: pyqwest.HTTPVersion | None = pyqwest.HTTPVersion.HTTP2
    elif mode == "http1":
        version = pyqwest.HTTPVersion.HTTP1
    else:
        version = None  # ALPN picks h2 when the server offers it
    return pyqwest.HTTPTransport(
        http_version=version,
        tls_include_system_certs=True,
        connect_timeout=5.0,
        pool_idle_timeout=90.0,
        # Responses are decoded by connectrpc; no need to advertise every codec.
        enable_brotli=False,
        enable_zstd=False,
        follow_redirects=False,
        enable_otel=False,
        dns_overrides=dns_overrides,
    )


async def _yes() -> bool:
    return True


def _no() -> bool:
    return False


@dataclass
class UpstreamClients:
    """Connect clients for one registered subsystem (cheap: the transport is shared).

    Each generated client is made on first use: building one resolves its
    interceptors (typing.Protocol checks), and a thousand subsystems that only ever
    get probed (or never answer) would otherwise pay for five each, every time.
    """

    instance_id: str
    endpoint: str
    mode: HttpMode
    transport: pyqwest.Transport
    # Observers of every call (metrics, trace headers); see serving/observe.py.
    interceptors: Sequence[Interceptor] = ()
    # Whether something accepts TCP connections at the endpoint now (a cheap check
    # before a probe), and whether a connect is refused at once (cheaper still: no
    # wait); in-process transports have no sockets and always say yes and no.
    listening: Callable[[], Awaitable[bool]] = field(default=_yes)
    refused_now: Callable[[], bool] = field(default=_no)

    def _options(self) -> dict[str, Any]:
        return {
            "protocol": ProtocolType.CONNECT,
            "send_compression": None,
            "accept_compression": (),
            "read_max_bytes": READ_MAX_BYTES,
            "http_client": self._http_client,
            "interceptors": self.interceptors,
        }

    @cached_property
    def _address(self) -> str:
        return self.endpoint.rstrip("/")

    @cached_property
    def _http_client(self) -> pyqwest.Client:
        return pyqwest.Client(self.transport)

    @cached_property
    def workflows(self) -> workflow_service_connect.WorkflowServiceClient:
        return workflow_service_connect.WorkflowServiceClient(self._address, **self._options())

    @cached_property
    def runs(self) -> run_service_connect.RunServiceClient:
        return run_service_connect.RunServiceClient(self._address, **self._options())

    @cached_property
    def analytics(self) -> analytics_service_connect.AnalyticsServiceClient:
        return analytics_service_connect.AnalyticsServiceClient(self._address, **self._options())

    @cached_property
    def stream(self) -> stream_service_connect.StreamServiceClient:
        return stream_service_connect.StreamServiceClient(self._address, **self._options())

    @cached_property
    def search(self) -> search_service_connect.SearchServiceClient:
        return search_service_connect.SearchServiceClient(self._address, **self._options())


async def tcp_listening(dial: str, timeout_s: float = LISTEN_CHECK_TIMEOUT_S) -> bool:
    """Whether `dial` (`address:port`, IPv6 in brackets) accepts a TCP connection now.

    A socket, a non-blocking connect and a wait for it to be writable, on the event
    loop: a fraction of a refused HTTP probe through the Connect client and pyqwest
    (~2 ms). Not `loop.sock_connect`: under pyvoy's loop that resolved the address
    again in a worker thread, which cost more than the connect.
    """
    started = _start_connect(dial)
    if started is None:
        return False
    sock, status = started
    with sock:
        if status == errno.EINPROGRESS:
            loop = asyncio.get_running_loop()
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(sock.fileno(), wake, writable)
            try:
                async with asyncio.timeout(timeout_s):
                    await writable
            except TimeoutError:
                return False
            finally:
                loop.remove_writer(sock.fileno())
            status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return status == 0


def tcp_refused_now(dial: str) -> bool:
    """Whether a TCP connect to `dial` fails at once, known without waiting.

    Nothing listening on a loopback or local port is refused within the connect call
    itself; a remote or listening address reports "still connecting" (False: ask
    `tcp_listening`).
    """
    started = _start_connect(dial)
    if started is None:
        return True
    sock, status = started
    sock.close()
    return status not in (0, errno.EINPROGRESS)


def _start_connect(dial: str) -> tuple[socket.socket, int] | None:
    """A non-blocking socket connecting to `dial`, and where it stands: 0 (connected),
    EINPROGRESS, or the error already known. None when `dial` is not an address."""
    host, _, port = dial.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        status = sock.connect_ex((host, int(port)))
    except (OSError, ValueError):
        sock.close()
        return None
    if status in (errno.EINPROGRESS, errno.EWOULDBLOCK):
        # The kernel may have its answer already: a refusal on loopback arrives
        # within the connect call. Reading SO_ERROR clears it, hence the mapping.
        status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.EINPROGRESS
    return sock, status


def initial_mode(endpoint: str) -> HttpMode:
    return "tls" if endpoint.lower().startswith("https://") else "h2c"


Connect = Callable[[str, str, "HttpMode | None"], UpstreamClients]
"""(subsystem id, endpoint, HTTP mode or None for the endpoint's default) -> clients.

The one seam between the proxy and the network: production connects through
`SharedTransports`, tests through an in-process ASGI transport.
"""


class RequestLeg(Protocol):
    """A way out for the upstream calls made while a request is being served.

    The server sets one in REQUEST_LEG for the duration of each API request (under
    pyvoy: the Envoy the app runs in, serving/envoy_leg.py); background work
    (discovery, streams) never sees one and stays on the shared transports.
    """

    async def execute(
        self, request: pyqwest.Request, mode: HttpMode, dial: str
    ) -> pyqwest.Response | None:
        """The answer to `request` sent to `dial`; None when the leg could not send it
        (its own limits), so the caller sends it another way."""
        ...


REQUEST_LEG: ContextVar[RequestLeg | None] = ContextVar("flowwatch_request_leg", default=None)
# Unary Connect calls only: a stream may outlive what the leg allows for one call.
_UNARY_CONTENT_TYPES = ("application/proto", "application/json")


Pin = Callable[[HttpMode, str, str], pyqwest.Transport]
"""(mode, host name, checked `address:port`) -> a transport that dials that name only there."""


class GuardedTransport:
    """The gateway's upstream transport: policy-checked, bounded, and clear about what
    never arrived.

    Registration checks an endpoint once; a name can later resolve elsewhere (DNS
    rebinding), so with a checker every request's endpoint is checked again before it
    is dialed (verdicts are cached briefly), and the connection goes to the address
    that was checked: a host name is sent through `pin`'s transport for that address,
    never resolved again by the HTTP client. A refusal, like a connection that could
    not be made, is `UpstreamUnreached` (unavailable): this subsystem cannot be asked,
    a broadcast goes on with the others, and the caller is told so in the gateway's
    words. Every other error is the subsystem's own answer.

    Every answer, whichever way it came, is read through `capped_response`: the one
    place where a subsystem's reply is bounded (connectrpc's own limit is applied only
    after a unary body was read whole, and not at all to a stream's error body).

    A unary call made while a request is served goes out through that request's
    REQUEST_LEG when there is one, to the address just checked.
    """

    def __init__(
        self,
        inner: pyqwest.Transport,
        checker: EndpointChecker | None,
        mode: HttpMode = "h2c",
        *,
        pin: Pin | None = None,
    ) -> None:
        """`inner` carries requests to IP hosts, and every request when `pin` is None
        (in-process transports, which resolve nothing)."""
        self._inner = inner
        self._checker = checker
        self._mode = mode
        self._pin = pin

    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        stream = (request.headers.get("content-type") or "").startswith(_ENVELOPED_TYPES)
        return await capped_response(await self._send(request), stream=stream)

    async def _send(self, request: pyqwest.Request) -> pyqwest.Response:
        transport = self._inner
        if self._checker is not None:
            parts = urlsplit(request.url)
            try:
                dial = await self._checker.dial_address(f"{parts.scheme}://{parts.netloc}")
            except ConnectError as exc:
                raise UpstreamUnreached(Code.UNAVAILABLE, exc.message) from None
            if dial is None:
                # Letting the HTTP client resolve it would connect to an unchecked address.
                message = f"could not reach the subsystem: {parts.hostname} does not resolve"
                raise UpstreamUnreached(Code.UNAVAILABLE, message)
            leg = REQUEST_LEG.get()
            content_type = request.headers.get("content-type")
            if leg is not None and content_type in _UNARY_CONTENT_TYPES:
                answer = await leg.execute(request, self._mode, dial)
                if answer is not None:
                    return answer
            host = parts.hostname or ""
            if self._pin is not None and not is_ip_literal(host):
                transport = self._pin(self._mode, host, dial)
        try:
            return await transport.execute(request)
        except ConnectError:
            raise
        except Exception as exc:  # refused, reset, TLS: the request never got an answer
            message = f"could not reach the subsystem: {exc}"
            raise UpstreamUnreached(Code.UNAVAILABLE, message) from exc


# Transports pinned to one checked address each are made per (mode, name, address);
# past this many the least recently used is let go (its calls in flight finish).
PINNED_TRANSPORTS_MAX = 1024


class SharedTransports:
    """One pyqwest transport per HTTP mode, made on first use, shared by every subsystem
    registered at an IP address; one per checked address for those registered by name
    (see GuardedTransport), at most PINNED_TRANSPORTS_MAX of them."""

    def __init__(
        self,
        checker: EndpointChecker | None = None,
        *,
        interceptors: Callable[[str], Sequence[Interceptor]] | None = None,
        pinned_max: int = PINNED_TRANSPORTS_MAX,
    ) -> None:
        """`interceptors` gives the interceptors for one subsystem's clients, by its id."""
        self._checker = checker
        self._interceptors = interceptors
        self._by_mode: dict[HttpMode, pyqwest.HTTPTransport] = {}
        self._guarded: dict[HttpMode, GuardedTransport] = {}
        self._pinned: OrderedDict[tuple[HttpMode, str, str], pyqwest.HTTPTransport] = OrderedDict()
        self._pinned_max = pinned_max

    def connect(
        self, instance_id: str, endpoint: str, mode: HttpMode | None = None
    ) -> UpstreamClients:
        mode = mode or initial_mode(endpoint)
        transport = self._guarded.get(mode)
        if transport is None:
            plain = self._by_mode[mode] = _transport(mode)
            transport = self._guarded[mode] = GuardedTransport(
                plain, self._checker, mode, pin=self.pinned
            )
        interceptors = () if self._interceptors is None else self._interceptors(instance_id)
        return UpstreamClients(
            instance_id,
            endpoint,
            mode,
            transport,
            interceptors,
            listening=functools.partial(self._listening, endpoint),
            refused_now=functools.partial(self._refused_now, endpoint),
        )

    def pinned(self, mode: HttpMode, host: str, dial: str) -> pyqwest.Transport:
        """The transport that connects `host` only to `dial` (the URL keeps the name, so
        Host, :authority, TLS SNI and certificate checks are the name's)."""
        key = (mode, host, dial)
        transport = self._pinned.get(key)
        if transport is not None:
            self._pinned.move_to_end(key)
            return transport
        transport = self._pinned[key] = _transport(mode, {host: [dial]})
        if len(self._pinned) > self._pinned_max:
            # Not closed: a stream may still be reading from it; dropping the last
            # reference frees it once its calls are done.
            self._pinned.popitem(last=False)
        return transport

    async def _listening(self, endpoint: str) -> bool:
        if self._checker is not None:
            try:
                dial = await self._checker.dial_address(endpoint)
            except ConnectError:
                return False  # refused by the policy: nothing to probe
        else:
            host, port = endpoint_host_port(endpoint)
            addresses = await resolve(host, port)
            dial = dial_text(addresses[0], port) if addresses else None
        return dial is not None and await tcp_listening(dial)

    def _refused_now(self, endpoint: str) -> bool:
        dial = None if self._checker is None else self._checker.dial_address_now(endpoint)
        return dial is not None and tcp_refused_now(dial)

    async def aclose(self) -> None:
        transports = [*self._by_mode.values(), *self._pinned.values()]
        self._by_mode, self._guarded = {}, {}
        self._pinned.clear()
        for transport in transports:
            await transport.aclose()


def never_connected(exc: ConnectError) -> bool:
    """Whether the call failed before a TCP connection existed (refused, no route).

    The HTTP client reports these as its "tcp connect error"; an HTTP/2 failure
    against an HTTP/1.1-only server happens on an open connection instead.
    """
    cause = exc.__cause__
    return (
        isinstance(exc, UpstreamUnreached)
        and isinstance(cause, ConnectionError)
        and "tcp connect error" in str(cause)
    )


async def negotiate(
    clients: UpstreamClients,
    connect: Connect,
) -> tuple[UpstreamClients, bool]:
    """Check that the instance answers over h2c; fall back to HTTP/1.1 when it does not.

    Returns the client set to keep (the same one, or a new HTTP/1.1 one) and
    whether the subsystem answered at all; a subsystem that registers before its own
    server listens answers neither yet, and the caller probes again later. Probing
    with GetCapabilities is harmless and is also what discovery needs.
    """
    if clients.mode != "h2c":
        return clients, True
    try:
        await clients.workflows.get_capabilities(
            workflow_service_pb2.GetCapabilitiesRequest(), timeout_ms=PROBE_TIMEOUT_MS
        )
        return clients, True
    except ConnectError as exc:
        if exc.code not in NEGOTIATION_FAILURE_CODES:
            return clients, True  # it answered over HTTP/2, just not with success
        if never_connected(exc):
            return clients, False  # nothing listens there: HTTP/1.1 would be refused too
        h2_error = exc
    fallback = connect(clients.instance_id, clients.endpoint, "http1")
    try:
        await fallback.workflows.get_capabilities(
            workflow_service_pb2.GetCapabilitiesRequest(), timeout_ms=PROBE_TIMEOUT_MS
        )
    except ConnectError as exc:
        if exc.code in NEGOTIATION_FAILURE_CODES:
            log.debug(
                "instance %s at %s did not answer a probe over h2c (%s) or HTTP/1.1 (%s)",
                clients.instance_id,
                clients.endpoint,
                h2_error.code.name,
                exc.code.name,
            )
            return clients, False
    log.info(
        "instance %s at %s does not speak h2c; using HTTP/1.1",
        clients.instance_id,
        clients.endpoint,
    )
    return fallback, True
