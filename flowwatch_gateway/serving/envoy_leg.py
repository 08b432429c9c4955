"""The passthrough's upstream leg through Envoy itself, when the app runs inside pyvoy.

Measured on a routed GetRun (README, Performance): with pyqwest on this leg, its
runtime threads and the cross-thread wake-ups cost more CPU per call than the
gateway's own Python work. pyvoy can hand a request to the Envoy it runs in
(`pyvoy.asgi.httpclient.HTTPTransport`), which sends it from its own workers over
pooled connections. Subsystems register at run time, so the clusters are of Envoy's
ORIGINAL_DST kind: each request names its destination in DESTINATION_HEADER. The
gateway sets it to the address it has just resolved and checked against the endpoint
policy, so the connection goes to exactly the address that was allowed (no window
for DNS rebinding); the URL keeps the endpoint's own host name for `:authority`.

pyvoy's client only lives as long as the request that uses it, so this leg carries
the passthrough and, as the request leg (proxy/upstream.py, REQUEST_LEG), the unary
calls an API request makes (fan-out, routed calls of the decoding path); discovery
and streams keep the shared pyqwest transports. Plaintext endpoints only (https
ones stay on pyqwest, which verifies their certificates). The server configures the
clusters (`envoy_clusters`) and sets ENVOY_LEG_ENV in the app's environment; without
it (uvicorn, tests in-process) every call uses pyqwest.
"""

from __future__ import annotations

import os
from typing import Any

import pyqwest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.errors import UpstreamUnreached
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients, read_capped
from flowwatch_gateway.registry.endpoints import EndpointChecker

__all__ = ["ENVOY_LEG_ENV", "EnvoyLeg", "NeverSent", "envoy_clusters"]

ENVOY_LEG_ENV = "FLOWWATCH_GATEWAY_ENVOY_LEG"
DESTINATION_HEADER = "x-flowwatch-destination"
CLUSTERS: dict[HttpMode, str] = {"h2c": "flowwatch_h2c", "http1": "flowwatch_http1"}
CONNECT_TIMEOUT_S = 5.0  # as the pyqwest transports
# Envoy's router adds this to every answer that came from upstream; its own local
# replies (connect failures, overflow) do not carry it.
_FROM_UPSTREAM = "x-envoy-upstream-service-time"
# Envoy's router times each request by this header (its local reply: 504), which saves
# an asyncio timer per call; the answer of a subsystem that timed out has the header above.
_TIMEOUT_HEADER = "x-envoy-upstream-rq-timeout-ms"
HTTP_GATEWAY_TIMEOUT = 504
# Reset reasons of local replies for requests that never left Envoy.
_ENVOY_LIMITS = ("overflow", "no healthy upstream")
_NEVER_SENT = ("connection failure", "connection timeout", *_ENVOY_LIMITS)
_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_BREAKERS = ("max_connections", "max_pending_requests", "max_requests")
CLUSTER_LIMIT = 1_000_000
# Bytes a subsystem may send on one stream, and on one connection, before Envoy has
# passed them on to the app: what flow control then holds back is never buffered.
UPSTREAM_STREAM_WINDOW = 1024 * 1024
UPSTREAM_CONNECTION_WINDOW = 16 * 1024 * 1024


class NeverSent(Exception):
    """The request never reached the subsystem (no connection): sending it again is safe."""


def envoy_clusters() -> list[dict[str, Any]]:
    """The ORIGINAL_DST clusters, one per plaintext HTTP mode, for PyvoyServer(upstreams=)."""
    # Envoy's own HTTP/2 windows (256 MiB by default) would let a subsystem push far
    # past READ_MAX_BYTES into Envoy's buffers before the capped reader stops it.
    windows = {
        "initial_stream_window_size": UPSTREAM_STREAM_WINDOW,
        "initial_connection_window_size": UPSTREAM_CONNECTION_WINDOW,
    }
    protocols: dict[HttpMode, dict[str, Any]] = {
        "h2c": {"http2_protocol_options": windows},
        "http1": {"http_protocol_options": {}},
    }
    return [
        {
            "name": CLUSTERS[mode],
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": f"{CONNECT_TIMEOUT_S:g}s",
            "original_dst_lb_config": {
                "use_http_header": True,
                "http_header_name": DESTINATION_HEADER,
            },
            # Envoy's defaults (1,024 connections, requests and pending requests per
            # cluster) would cap the calls to all subsystems together; the gateway's
            # own limits bound them instead. An overflow would fall back, not fail.
            "circuit_breakers": {"thresholds": [dict.fromkeys(_BREAKERS, CLUSTER_LIMIT)]},
            "typed_extension_protocol_options": {
                _PROTOCOL_OPTIONS: {
                    "@type": f"type.googleapis.com/{_PROTOCOL_OPTIONS}",
                    "explicit_http_config": protocols[mode],
                }
            },
        }
        for mode in CLUSTERS
    ]


class EnvoyLeg:
    """Sends one passthrough request to a subsystem through Envoy's ORIGINAL_DST clusters."""

    def __init__(self, checker: EndpointChecker, *, timeout_s: float) -> None:
        self._checker = checker
        # Each call's deadline is its timeout header; the transport's is a backstop.
        self._timeout_s = timeout_s + 1.0
        self._transports: dict[HttpMode, pyqwest.Transport] = {}

    @classmethod
    def from_environment(cls, checker: EndpointChecker, *, timeout_s: float) -> EnvoyLeg | None:
        """The leg when the server configured its clusters (see the module docstring)."""
        if os.environ.get(ENVOY_LEG_ENV) != "1":
            return None
        return cls(checker, timeout_s=timeout_s)

    def serves(self, clients: UpstreamClients) -> bool:
        return clients.mode in CLUSTERS and clients.endpoint.lower().startswith("http://")

    def _transport(self, mode: HttpMode) -> pyqwest.Transport:
        transport = self._transports.get(mode)
        if transport is None:
            # Imported here: the module exists only inside pyvoy's Envoy process.
            from pyvoy.asgi.httpclient import HTTPTransport

            transport = self._transports[mode] = HTTPTransport(
                CLUSTERS[mode], timeout=self._timeout_s
            )
        return transport

    async def execute(
        self, request: pyqwest.Request, mode: HttpMode, dial: str
    ) -> pyqwest.Response | None:
        """The request leg: a unary call the caller has checked and times itself.

        None when Envoy's own limits kept it from sending (the caller sends it over
        pyqwest instead). A subsystem Envoy could not connect to, or lost on the way,
        is UpstreamUnreached in Envoy's words: with pyqwest asked to connect again,
        ListSubsystems over 1,000 unreachable subsystems took 1.34 s against 1.08 s
        (p50, one run each).
        """
        if mode not in CLUSTERS or not request.url.startswith("http://"):
            return None
        headers = [*request.headers.items(), (DESTINATION_HEADER, dial)]
        sent = pyqwest.Request(
            request.method, request.url, pyqwest.Headers(headers), request.content
        )
        response, local_reply = await self._send(mode, sent)
        if local_reply is None:
            return response
        if any(reason in local_reply for reason in _ENVOY_LIMITS):
            return None
        raise _lost(local_reply)

    async def post(
        self,
        clients: UpstreamClients,
        url: str,
        headers: dict[str | pyqwest.HTTPHeaderName, str],
        body: bytes,
        timeout_ms: int,
    ) -> tuple[int, str, bytes]:
        """(status, content type, body) of the subsystem's answer within `timeout_ms`.

        Raises NeverSent when no connection could be made, deadline_exceeded when
        Envoy's per-request timer (set from `timeout_ms`) fires first, UpstreamUnreached
        when the call was lost on the way (Envoy answered in the subsystem's place), and
        unavailable (as UpstreamUnreached) when the policy refuses the endpoint.
        """
        try:
            endpoint = clients.endpoint
            dial = self._checker.dial_address_now(endpoint) or (
                await self._checker.dial_address(endpoint)
            )
        except ConnectError as exc:
            raise UpstreamUnreached(Code.UNAVAILABLE, exc.message) from None
        if dial is None:
            raise NeverSent  # does not resolve: the decoding path says so in its words
        sent = {**headers, DESTINATION_HEADER: dial, _TIMEOUT_HEADER: str(timeout_ms)}
        request = pyqwest.Request("POST", url, pyqwest.Headers(sent), body)
        response, local_reply = await self._send(clients.mode, request)
        if local_reply is not None:
            if response.status == HTTP_GATEWAY_TIMEOUT:
                raise ConnectError(Code.DEADLINE_EXCEEDED, "Request timed out")
            if any(reason in local_reply for reason in _NEVER_SENT):
                raise NeverSent(local_reply)
            raise _lost(local_reply)
        answer = await read_capped(response)
        return response.status, response.headers.get("content-type") or "", answer

    async def _send(
        self, mode: HttpMode, request: pyqwest.Request
    ) -> tuple[pyqwest.Response, str | None]:
        """Envoy's response, and the text of its local reply when it answered itself."""
        response = await self._transport(mode).execute(request)
        if response.headers.get(_FROM_UPSTREAM) is not None:
            return response, None
        return response, (await read_capped(response)).decode("utf-8", "replace")


def _lost(local_reply: str) -> UpstreamUnreached:
    """A call Envoy could not complete (no connection, a reset), in Envoy's words."""
    return UpstreamUnreached(Code.UNAVAILABLE, f"could not reach the subsystem: {local_reply}")
