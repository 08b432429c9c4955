"""Per-run calls whose owner is known: bytes through, not messages (GATEWAY_PASSTHROUGH).

Profiling a routed GetRun (README, Performance) showed the gateway's Python thread
busy most of each call in framework work around one dictionary lookup: Starlette's
middleware and routing, connectrpc's server (decode, handler, encode), connectrpc's
client (encode, decode) and a disconnect watcher per request. For the per-run rpcs
(PER_RUN_RPCS) none of it is needed once the run's owner is known: this ASGI layer,
in front of the whole Starlette app, reads the request, decodes only what it must
(the run id and the required fields, to refuse what the decoding path refuses), and
sends the body as it is to the owner: through the Envoy the gateway runs in when it
can (envoy_leg.py), else over the shared pyqwest transport. The owner's answer goes
back as it is, with the headers the decoding path would send, CORS ones included.

Everything else falls back, unchanged, to the stack and the decoding path (with the
body read so far replayed): owner unknown, contested or not connected, a codec other
than Connect unary binary or JSON, a compressed request, GET requests, gRPC, streams,
anything that does not decode cleanly, an owner that could not be connected to,
actions on a read-only gateway.

The rules of a per-run call are not kept here: who owns the run, what an answer
must be and what it becomes, the deadline sent upstream and the error a caller sees
are asked of the same PerRunCalls the decoding path uses (proxy/per_run.py). This
layer only translates between ASGI and the upstream leg:

- upstream, the request goes as binary protobuf whatever the caller sent, with the
  deadline PerRunCalls gives in Connect-Timeout-Ms and no other header of the
  caller's (trace headers when GATEWAY_TRACE_PROPAGATION is on);
- the answer is decoded as the FlowWatch message it must be and encoded for the
  caller as the decoding path would: a JSON caller gets what the schema allows, never
  the subsystem's own JSON;
- errors are written the way connectrpc writes them;
- observation: counted as an API call to one subsystem and timed as an upstream
  call, as ObserveApiCalls and the upstream interceptor count the decoding path's;
- CORS: the stack's own CORSMiddleware writes the headers of every answer to a
  browser (a request with Origin); for other callers, what it adds (a Vary) is asked
  of it once per kind of answer and remembered, since asking it every time was a
  large share of the gateway's time per call;
- response compression: negotiated from Accept-Encoding as connectrpc's server does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyqwest
from connectrpc._compression import negotiate_compression, resolve_compressions
from connectrpc._protocol import ConnectWireError
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from flowwatch_gateway.api.context import CALLER_SCOPE, UNRESTRICTED, CallContext
from flowwatch_gateway.api.services import validate_request
from flowwatch_gateway.errors import UpstreamUnreached
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2
from flowwatch_gateway.proxy.per_run import PER_RUN_BY_NAME, PER_RUN_RPCS, PerRunCalls
from flowwatch_gateway.proxy.upstream import read_capped
from flowwatch_gateway.serving.envoy_leg import EnvoyLeg, NeverSent
from flowwatch_gateway.serving.observe import CallSink, UpstreamSink, trace_headers

__all__ = ["Passthrough"]

log = logging.getLogger(__name__)

PROTO = "application/proto"
JSON = "application/json"
# Per-run requests are a run id and a few small fields; anything bigger is not ours.
MAX_REQUEST_BYTES = 64 * 1024
_SERVICE = run_service_pb2.DESCRIPTOR.services_by_name["RunService"]
_COMPRESSIONS = resolve_compressions(None)  # what connectrpc's server offers by default
_JSON_CODEC = google_protobuf_json_codec()  # what the generated apps use
_Head = tuple[tuple[bytes, bytes], ...]  # an answer's headers, as ASGI sends them
_JSON_ERROR_HEADERS: _Head = ((b"content-type", JSON.encode()),)
_NO_HEADERS = Headers(raw=[])


@dataclass(frozen=True)
class _Rpc:
    name: str
    request: type[Message]
    response: type[Message]
    # JSON request keys accepted without a full protojson parse (string fields only).
    string_keys: Mapping[str, str]


def _rpc_table(*, read_only: bool) -> dict[str, _Rpc]:
    """The rpcs this layer may answer; a read-only gateway's actions are refused behind it."""
    table = {}
    for rpc in PER_RUN_RPCS:
        method = _SERVICE.methods_by_name[rpc.name]
        if method.server_streaming or method.client_streaming:
            continue
        if read_only and rpc.changes_state:
            continue
        request = run_service_pb2.DESCRIPTOR.message_types_by_name[method.input_type.name]
        response = run_service_pb2.DESCRIPTOR.message_types_by_name[method.output_type.name]
        keys = {}
        for proto_field in request.fields:
            if proto_field.type == FieldDescriptor.TYPE_STRING and not _repeated(proto_field):
                keys[proto_field.json_name] = proto_field.name
                keys[proto_field.name] = proto_field.name
        table[f"/{_SERVICE.full_name}/{rpc.name}"] = _Rpc(
            rpc.name,
            getattr(run_service_pb2, request.name),
            getattr(run_service_pb2, response.name),
            keys,
        )
    return table


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@dataclass
class _Call:
    """One call this layer is answering: what the caller asked for, and where to reply."""

    rpc: _Rpc
    content_type: str
    deadline: str  # Connect-Timeout-Ms as sent
    accept: str  # Accept-Encoding as sent
    send: Send  # the caller's send
    scope: Scope  # the caller's request, for CORS
    origin: bool  # whether it named an Origin (a browser's cross-origin call)
    trace: dict[str, str] = field(default_factory=dict)
    answered: bool = False


class _Fallback(Exception):
    """This call takes the decoding path (raised before anything was sent upstream)."""


class _Sink(UpstreamSink, CallSink, Protocol):
    """Where the passthrough reports its calls (GatewayMetrics)."""


class Passthrough:
    """ASGI app in front of the gateway's whole stack (`app`), which gets everything else.

    It does for its own answers what the stack's layers would: CORS headers (the
    stack's own CORSMiddleware writes them), the API-call and upstream metrics, trace
    headers, and a read-only gateway's refusal of actions (by leaving them to the
    stack). A call that falls back reaches the stack as if this layer were not there.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        calls: PerRunCalls,
        sink: _Sink | None = None,
        envoy: EnvoyLeg | None = None,
        cors: CORSMiddleware | None = None,
        propagate_trace: bool = False,
        read_only: bool = False,
    ) -> None:
        """`envoy`: send through the Envoy the app runs in (envoy_leg.py), else pyqwest."""
        self._app = app
        self._calls = calls
        self._sink = sink
        self._envoy = envoy
        self._cors = cors
        self._propagate_trace = propagate_trace
        self._rpcs = _rpc_table(read_only=read_only)
        # Answer headers -> what CORSMiddleware makes of them without Origin (a few kinds).
        self._heads: dict[_Head, _Head] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rpc = self._rpcs.get(scope["path"]) if scope["type"] == "http" else None
        if rpc is None or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        content_type = accept_encoding = timeout = ""
        origin = False
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.lower()
            if name == b"content-type":
                content_type = raw_value.decode("latin-1")
            elif name == b"connect-timeout-ms":
                timeout = raw_value.decode("latin-1")
            elif name == b"accept-encoding":
                accept_encoding = raw_value.decode("latin-1")
            elif name == b"origin":
                origin = True
            elif (name == b"content-encoding" and raw_value != b"identity") or (
                name == b"connect-protocol-version" and raw_value != b"1"
            ):
                await self._app(scope, receive, send)  # compressed, or not Connect v1
                return
        if content_type not in (PROTO, JSON):  # gRPC, gRPC-Web, other codecs
            await self._app(scope, receive, send)
            return
        body, read = await _read_body(receive)
        call = _Call(rpc, content_type, timeout, accept_encoding, send, scope, origin)
        if self._propagate_trace:
            call.trace = trace_headers(scope["headers"])
        try:
            if body is None:
                raise _Fallback
            await self._pass(call, body)
        except _Fallback:
            await self._app(scope, _replay(read, receive), send)
        except Exception:  # a bug here must not leave the caller without an answer
            log.exception("passthrough of %s failed", rpc.name)
            if not call.answered:
                await self._send_error(call, ConnectError(Code.INTERNAL, "internal error"))

    async def _reply(self, call: _Call, status: int, headers: _Head, body: bytes) -> None:
        """One answer, with the CORS headers the stack's CORSMiddleware would add."""
        call.answered = True
        start: AsgiMessage = {"type": "http.response.start", "status": status}
        if self._cors is None:
            start["headers"] = list(headers)
            await call.send(start)
        elif call.origin:
            start["headers"] = list(headers)
            request_headers = Headers(scope=call.scope)
            await self._cors.send(start, send=call.send, request_headers=request_headers)
        else:
            start["headers"] = await self._without_origin(headers)
            await call.send(start)
        await call.send({"type": "http.response.body", "body": body})

    async def _without_origin(self, headers: _Head) -> list[tuple[bytes, bytes]]:
        """What CORSMiddleware makes of `headers` for a request without Origin (the
        same every time, so asked once per kind of answer)."""
        known = self._heads.get(headers)
        if known is None:
            assert self._cors is not None  # only asked with CORS configured
            seen: list[AsgiMessage] = []

            async def keep(message: AsgiMessage) -> None:
                seen.append(message)

            start = {"type": "http.response.start", "headers": list(headers)}
            await self._cors.send(start, send=keep, request_headers=_NO_HEADERS)
            known = self._heads[headers] = tuple(seen[0]["headers"])
        return list(known)

    async def _send_error(self, call: _Call, error: ConnectError) -> None:
        """An error response exactly as connectrpc's server writes one for a unary call."""
        wire = ConnectWireError.from_exception(error)
        status = wire.to_http_status().code
        await self._reply(call, status, _JSON_ERROR_HEADERS, wire.to_json_bytes())

    async def _pass(self, call: _Call, body: bytes) -> None:
        rpc = call.rpc
        request = _decode_request(rpc, call.content_type, body)
        run_id: str = request.run_id  # type: ignore[attr-defined]
        clients = self._calls.owner_now(run_id)
        scope = CALLER_SCOPE.get()
        if clients is None or isinstance(scope, Exception):
            raise _Fallback  # the decoding path refuses a caller in its protocol's words
        owner = clients.instance_id
        ctx = CallContext.with_timeout(_caller_timeout_s(call.deadline), scope or UNRESTRICTED)
        acts = PER_RUN_BY_NAME[rpc.name].changes_state
        try:
            self._calls.authorize(rpc.name, owner, run_id, ctx, acts=acts)
        except ConnectError as exc:
            if acts:
                self._calls.audit(ctx, rpc.name, run_id, owner, exc)
            await self._send_error(call, exc)
            return
        timeout_ms = self._calls.timeout_ms(ctx)
        headers: dict[str | pyqwest.HTTPHeaderName, str] = {
            "content-type": PROTO,
            "connect-protocol-version": "1",
            "connect-timeout-ms": str(timeout_ms),
            "accept-encoding": "identity",
        }
        headers.update(call.trace)
        url = f"{clients.endpoint.rstrip('/')}/{_SERVICE.full_name}/{rpc.name}"
        upstream_body = body if call.content_type == PROTO else request.SerializeToString()
        started = time.monotonic()
        error: ConnectError | None = None
        try:
            if self._envoy is not None and self._envoy.serves(clients):
                exchange = self._envoy.post(clients, url, headers, upstream_body, timeout_ms)
                bound = None  # Envoy times the request itself
            else:
                exchange = _post(clients.transport, url, headers, upstream_body)
                bound = timeout_ms
            status, answer_type, answer = await _bounded(exchange, bound)
            error = _answer_error(status, answer_type, answer)
        except ConnectError as exc:
            error = exc
        except NeverSent as exc:
            # Nothing reached the owner: the decoding path tries, and reports it its way.
            raise _Fallback from exc
        if self._sink is not None:
            self._sink.upstream_call(owner, rpc.name, error, time.monotonic() - started, unary=True)
        refusal = None if error is None else self._calls.failed(owner, run_id, error)
        if error is not None and refusal is None:
            raise _Fallback  # the owner disowned the run: the decoding path looks again
        if self._sink is not None:
            self._sink.fanned_out(rpc.name, 1)  # as the stack's ObserveApiCalls counts calls
        if refusal is None:
            try:
                answer = self._answer(rpc, call.content_type, answer, owner, run_id)
            except ConnectError as exc:
                refusal = exc
        if acts:
            self._calls.audit(ctx, rpc.name, run_id, owner, refusal)
        if refusal is not None:
            await self._send_error(call, refusal)
            return
        compression = negotiate_compression(call.accept, _COMPRESSIONS)
        head = (
            (b"content-type", call.content_type.encode()),
            (b"content-encoding", compression.name().encode()),
            (b"vary", b"Accept-Encoding"),
        )
        await self._reply(call, 200, head, compression.compress(answer))

    def _answer(
        self, rpc: _Rpc, content_type: str, answer: bytes, owner: str, run_id: str
    ) -> bytes:
        """The owner's binary answer as the decoding path would send it to this caller."""
        try:
            decoded = rpc.response.FromString(answer)
        except DecodeError:
            raise ConnectError(
                Code.INTERNAL,
                f"subsystem {owner} sent a {rpc.name} answer that is not a valid "
                f"{rpc.response.DESCRIPTOR.name}",
            ) from None
        named = _run_subsystem(decoded)
        accepted = self._calls.accepted(PER_RUN_BY_NAME[rpc.name], owner, run_id, decoded)
        if content_type == JSON:
            return bytes(_JSON_CODEC.encode(accepted))
        if _run_subsystem(accepted) != named:
            return accepted.SerializeToString()  # the run now names its subsystem
        return answer


async def _read_body(receive: Receive) -> tuple[bytes | None, list[AsgiMessage]]:
    """The whole request body (None when it cannot be ours) and the messages read."""
    read: list[AsgiMessage] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return None, read
        size += len(message.get("body", b""))
        if size > MAX_REQUEST_BYTES:
            return None, read
        if not message.get("more_body", False):
            break
    if len(read) == 1:
        return bytes(read[0].get("body", b"")), read
    return b"".join(m.get("body", b"") for m in read), read


def _replay(read: list[AsgiMessage], receive: Receive) -> Receive:
    """A receive() that gives back what was already read, then reads on."""
    pending = list(read)

    async def replayed() -> AsgiMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def _caller_timeout_s(header: str) -> float | None:
    if not header:
        return None
    if not header.isdigit() or len(header) > 10 or int(header) == 0:
        # Malformed or already expired: connectrpc's server answers those itself.
        raise _Fallback
    return int(header) / 1000.0


def _decode_request(rpc: _Rpc, content_type: str, body: bytes) -> Message:
    """The request, if the decoding path would accept it; else _Fallback.

    Binary requests are parsed in full (microseconds: a run id and a few fields). JSON
    requests of string fields are checked key by key, which is what protojson would
    accept; anything else is parsed by protojson.
    """
    try:
        if content_type == PROTO:
            request = rpc.request.FromString(body)
        else:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise _Fallback
            request = rpc.request()
            seen = set()
            for key, value in data.items():
                name = rpc.string_keys.get(key)
                if name is None or not isinstance(value, str) or name in seen:
                    # Other fields (levels, pagination), null, or a field named twice.
                    request = _JSON_CODEC.decode(body, rpc.request)
                    break
                seen.add(name)
                setattr(request, name, value)
        validate_request(rpc.name, request)
    except (DecodeError, ValueError, ConnectError, TypeError) as exc:
        raise _Fallback from exc
    return request


async def _bounded(
    exchange: Coroutine[Any, Any, tuple[int, str, bytes]], timeout_ms: int | None
) -> tuple[int, str, bytes]:
    """The exchange within `timeout_ms` (None: it is bounded itself), failures as the
    generated client reports them."""
    try:
        if timeout_ms is None:
            return await exchange
        async with asyncio.timeout(timeout_ms / 1000):
            return await exchange
    except TimeoutError as exc:
        raise ConnectError(Code.DEADLINE_EXCEEDED, "Request timed out") from exc
    except (ConnectError, NeverSent):
        raise
    except Exception as exc:  # no answer came: the caller hears it in the gateway's words
        log.debug("passthrough exchange failed: %s", exc)
        raise UpstreamUnreached(Code.UNAVAILABLE, "could not reach the subsystem") from exc


async def _post(
    transport: pyqwest.Transport,
    url: str,
    headers: dict[str | pyqwest.HTTPHeaderName, str],
    body: bytes,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of the owner's answer over a pyqwest transport."""
    response = await transport.execute(pyqwest.Request("POST", url, pyqwest.Headers(headers), body))
    answer = await read_capped(response)
    return response.status, response.headers.get("content-type") or "", answer


def _run_subsystem(answer: Message) -> str | None:
    """The subsystem a GetRun answer's run names (None for other answers)."""
    if isinstance(answer, run_service_pb2.GetRunResponse):
        return answer.run.subsystem_id
    return None


def _answer_error(status: int, answer_type: str, answer: bytes) -> ConnectError | None:
    """The owner's answer as the generated client reads it: None for a usable message."""
    media_type = answer_type.split(";")[0].strip().lower()
    if status != 200:
        if media_type != JSON:
            return ConnectWireError.from_http_status(status).to_exception()
        try:
            data: Any = json.loads(answer)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return ConnectWireError.from_dict(data, status, Code.UNAVAILABLE).to_exception()
        return ConnectWireError.from_http_status(status).to_exception()
    if media_type != PROTO:
        code = Code.UNKNOWN if not media_type.startswith("application/") else Code.INTERNAL
        return ConnectError(code, f"invalid content-type: '{media_type}'; expecting '{PROTO}'")
    return None
