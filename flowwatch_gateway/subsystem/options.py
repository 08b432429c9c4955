"""What a subsystem author configures, and what the client reports back.

`ClientOptions` says how to reach the gateway and what to announce; the client
reports each change of its connection as a `ClientStatus` to `on_state_change`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

import pyqwest

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.subsystem.backoff import Backoff
from flowwatch_gateway.urls import endpoint_url_problem, http_url_problem, redact_url

__all__ = [
    "ClientOptions",
    "ClientStatus",
    "ConnectionState",
    "StateCallback",
    "default_gateway_transport",
    "default_local_transport",
]


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    REJECTED = "rejected"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ClientStatus:
    """One state change of the connection, as passed to `on_state_change`.

    `attempt` counts connection attempts since start (1 = the first); `reason` says
    why the gateway rejected or why the last connection ended; `delay` is the wait
    before the next attempt while backing off; `heartbeat_interval` is what the
    gateway announced when it accepted.
    """

    state: ConnectionState
    attempt: int = 0
    reason: str = ""
    delay: float = 0.0
    heartbeat_interval: float = 0.0


StateCallback = Callable[[ClientStatus], None]


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the gateway and what to tell it.

    `workflows`, `capabilities` and `metadata` left as None are read from the
    subsystem's own FlowWatch API at `local_endpoint` before every attempt; reading
    the metadata (GetSubsystem) also fills an empty `name` and `description`.
    `http_client` carries the Register stream and must speak HTTP/2 (default: prior
    knowledge for http://, ALPN for https://);
    `local_http_client` calls the local API (default: HTTP/1.1, ALPN for https://).
    """

    gateway_url: str
    subsystem_id: str
    local_endpoint: str
    api_key: str = field(default="", repr=False)
    name: str = ""
    description: str = ""
    workflows: Sequence[types_pb2.WorkflowDefinition] | None = None
    capabilities: types_pb2.Capabilities | None = None
    metadata: Mapping[str, str] | None = None
    http_client: pyqwest.Client | None = field(default=None, repr=False)
    local_http_client: pyqwest.Client | None = field(default=None, repr=False)
    backoff: Backoff = field(default_factory=Backoff)
    on_state_change: StateCallback | None = field(default=None, repr=False)
    # Seconds to wait for the gateway's RegisterResponse, and per local API call.
    register_timeout: float = 10.0
    local_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.subsystem_id.strip():
            raise ValueError("subsystem_id is required (the id the gateway lists this under)")
        problem = http_url_problem(self.gateway_url)
        if problem:
            raise ValueError(
                "gateway_url must be an absolute http(s) URL such as http://127.0.0.1:8091, "
                f"got {self.gateway_url!r}: {problem}"
            )
        # The gateway refuses such an endpoint at every attempt; say so before the first.
        problem = endpoint_url_problem(self.local_endpoint)
        if problem:
            raise ValueError(
                f"local_endpoint {redact_url(self.local_endpoint)!r} would be refused by the "
                f"gateway: {problem}"
            )
        if self.register_timeout <= 0 or self.local_timeout <= 0:
            raise ValueError(
                f"timeouts must be greater than 0, got register_timeout={self.register_timeout} "
                f"local_timeout={self.local_timeout}"
            )


def default_gateway_transport(gateway_url: str) -> pyqwest.HTTPTransport:
    """HTTP/2 for Register: prior knowledge on plaintext, negotiated by ALPN over TLS."""
    if urlsplit(gateway_url).scheme == "https":
        return pyqwest.HTTPTransport(tls_include_system_certs=True)
    return pyqwest.HTTPTransport(http_version=pyqwest.HTTPVersion.HTTP2)


def default_local_transport() -> pyqwest.HTTPTransport:
    """Plain unary calls to the local API: HTTP/1.1 works with every FlowWatch server."""
    return pyqwest.HTTPTransport(tls_include_system_certs=True)
