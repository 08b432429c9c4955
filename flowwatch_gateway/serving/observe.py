"""Watching API calls and the upstream calls they cause, without touching the proxy.

Two hooks, one on each side of the proxy:

- `ObserveApiCalls`, an ASGI middleware around the FlowWatch API, opens a
  `CallRecord` for each call in a context variable: the rpc name, the caller's W3C
  trace context (only with GATEWAY_TRACE_PROPAGATION) and the set of subsystems
  the call reached. When the response starts it counts a partial failure if the
  `flowwatch-partial-failure` header is set; when the call ends it records the
  fan-out width.
- `UpstreamObserver`, a connectrpc client interceptor on every subsystem's clients,
  reads that record: it adds its subsystem to it, forwards the trace headers, and
  times the call (`upstream_request_duration_seconds` by rpc and code), keeping
  failures for the status page.

A context variable reaches the upstream calls because asyncio copies the context
into every task a handler starts (fan-outs use asyncio.gather); the record itself is
shared and mutable, so what those tasks add is seen when the call ends.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from connectrpc.errors import ConnectError
from connectrpc.method import StreamType
from connectrpc.request import RequestContext

from flowwatch_gateway.api.context import PARTIAL_FAILURE_HEADER

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CallRecord",
    "CallSink",
    "ObserveApiCalls",
    "UpstreamObserver",
    "UpstreamSink",
    "current_call",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C Trace Context, version 00 (and later versions' common prefix): anything else is
# not forwarded, so a caller cannot smuggle arbitrary text into upstream requests.
_TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_TRACESTATE_LEN = 512  # the spec's own limit on what must be propagated
_PARTIAL_FAILURE_HEADER_BYTES = PARTIAL_FAILURE_HEADER.encode()


@dataclass
class CallRecord:
    """One FlowWatch API call in flight, as the upstream calls it causes see it."""

    rpc: str
    trace_headers: dict[str, str] = field(default_factory=dict)
    subsystems: set[str] = field(default_factory=set)


current_call: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "flowwatch_gateway_current_call", default=None
)


class CallSink(Protocol):
    """Where ObserveApiCalls reports (GatewayMetrics)."""

    def partial_failure(self, rpc: str) -> None: ...

    def fanned_out(self, rpc: str, width: int) -> None: ...


class UpstreamSink(Protocol):
    """Where UpstreamObserver reports each finished upstream call."""

    def upstream_call(
        self,
        subsystem_id: str,
        rpc: str,
        error: Exception | None,
        seconds: float,
        *,
        unary: bool,
    ) -> None: ...


def trace_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The caller's traceparent (if well formed) and tracestate, to forward upstream."""
    found: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in (TRACEPARENT, TRACESTATE) and name not in found:
            found[name] = raw_value.decode("latin-1").strip()
    if not _TRACEPARENT_RE.match(found.get(TRACEPARENT, "")):
        return {}  # tracestate means nothing without a valid traceparent
    state = found.get(TRACESTATE, "")
    if not state or len(state) > MAX_TRACESTATE_LEN:
        found.pop(TRACESTATE, None)
    return found


class ObserveApiCalls:
    """ASGI middleware: a CallRecord per FlowWatch API call (see the module docstring).

    `rpcs` maps request paths (`/flowwatch.v1.RunService/ListRuns`) to rpc names;
    other paths pass through untouched, which also keeps the rpc label bounded.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        rpcs: dict[str, str],
        sink: CallSink,
        propagate_trace: bool,
    ) -> None:
        self._app = app
        self._rpcs = rpcs
        self._sink = sink
        self._propagate_trace = propagate_trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rpc = self._rpcs.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rpc is None:
            await self._app(scope, receive, send)
            return
        record = CallRecord(rpc)
        if self._propagate_trace:
            record.trace_headers = trace_headers(scope.get("headers", ()))

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and any(
                name.lower() == _PARTIAL_FAILURE_HEADER_BYTES for name, _ in message["headers"]
            ):
                self._sink.partial_failure(rpc)
            await send(message)

        token = current_call.set(record)
        try:
            await self._app(scope, receive, observed_send)
        finally:
            current_call.reset(token)
            if record.subsystems:
                self._sink.fanned_out(rpc, len(record.subsystems))


class UpstreamObserver:
    """connectrpc client interceptor (metadata kind) for one subsystem's clients."""

    def __init__(self, subsystem_id: str, sink: UpstreamSink) -> None:
        self._subsystem_id = subsystem_id
        self._sink = sink

    async def on_start(self, ctx: RequestContext[object, object]) -> float:
        record = current_call.get()
        if record is not None:
            record.subsystems.add(self._subsystem_id)
            for name, value in record.trace_headers.items():
                ctx.request_headers[name] = value
        return time.monotonic()

    async def on_end(
        self, started: float, ctx: RequestContext[object, object], error: Exception | None
    ) -> None:
        self._sink.upstream_call(
            self._subsystem_id,
            ctx.method.name,
            error,
            time.monotonic() - started,
            unary=ctx.method.stream_type is StreamType.UNARY,
        )


def upstream_observers(sink: UpstreamSink) -> Callable[[str], list[UpstreamObserver]]:
    """The interceptors to install on one subsystem's clients, by subsystem id."""
    return lambda subsystem_id: [UpstreamObserver(subsystem_id, sink)]


def error_code(error: Exception | None) -> str:
    """The code label of a finished call: `ok`, a Connect code name, or `unknown`."""
    if error is None:
        return "ok"
    if isinstance(error, ConnectError):
        return error.code.name.lower()
    return "unknown"
