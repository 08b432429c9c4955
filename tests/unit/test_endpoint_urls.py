"""Endpoints a subsystem may register: only scheme, host, port and a plain path prefix.

Anything that lets the registrant pick the exact path of the gateway's calls (a query
or fragment swallowing the appended `/<service>/<method>`), hides credentials, or
makes the path mean different things to different parsers is refused at
registration, with a message saying what to change.
"""

from __future__ import annotations

import pyqwest
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2
from flowwatch_gateway.gen.flowwatch.v1 import workflow_service_pb2 as wf
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.base import SystemClock
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.validation import validate_register_request
from flowwatch_gateway.serving.status import GatewayFacts, UpstreamHealth, render_status_page
from flowwatch_gateway.subsystem.options import ClientOptions
from flowwatch_gateway.urls import endpoint_url_problem, redact_url

pytestmark = pytest.mark.anyio

BAD_ENDPOINTS = [
    ("http://127.0.0.1:9901/quitquitquit#", "it has a fragment"),
    ("http://orders:8080#x", "it has a fragment"),
    ("http://orders:8080/admin/delete?confirm=1&x=", "it has a query"),
    ("http://orders:8080/?", "it has a query"),
    ("http://user:s3cret@orders:8080", "it carries credentials"),
    ("http://user@orders:8080", "it carries credentials"),
    ("http://orders:8080\\@evil:80", "backslash"),
    ("http://orders:8080/a\\b", "backslash"),
    ("http://orders:8080/a b", "whitespace or a control character"),
    (" http://orders:8080", "whitespace or a control character"),
    ("http://orders:8080/\r\nHost: evil", "whitespace or a control character"),
    ("http://orders:8080/\x00", "whitespace or a control character"),
    ("http://orders:8080/\u200b", "whitespace or a control character"),
    ("http://orders:8080/a%2fb", "'%2f', an encoded separator"),
    ("http://orders:8080/a%3Fb", "'%3F', an encoded separator"),
    ("http://orders:8080/a%23b", "'%23', an encoded separator"),
    ("http://orders:8080/%2e%2e/admin", "'%2e', an encoded separator"),
    ("http://orders:8080/a%252fb", "'%25', an encoded separator"),
    ("http://orders:8080/a%5cb", "'%5c', an encoded separator"),
    ("http://orders:8080/a%zz", "malformed percent-escape"),
    ("http://orders:8080/a%2", "malformed percent-escape"),
    ("http://orders%2eevil:8080", "host is percent-encoded"),
    ("http://orders:8080/../admin", "'.' or '..' segment"),
    ("http://orders:8080/flowwatch/..", "'.' or '..' segment"),
    ("http://orders:8080/./x", "'.' or '..' segment"),
    ("http://orders:8080//admin", "empty segment"),
    ("http://orders:8080/a..;/b", "';'"),
    ("orders:8080", "not an absolute http(s) URL"),
    ("ftp://orders:21", "scheme must be http or https"),
    ("http://orders:99999", "not an absolute http(s) URL"),
    ("http:///no-host", "no host"),
]

GOOD_ENDPOINTS = [
    "http://orders:8080",
    "http://orders:8080/",
    "https://orders.internal",
    "http://host:8080/flowwatch/",
    "http://host:8080/flowwatch/v1",
    "http://[::1]:9101",
    "http://[2001:db8::5]:9101/prefix/",
    "http://10.0.0.5:9101",
    "http://orders:8080/a..b/x.y/",
    "http://orders:8080/a%20b/",
]


def request(endpoint: str) -> gateway_service_pb2.RegisterRequest:
    return gateway_service_pb2.RegisterRequest(subsystem_id="orders", flowwatch_endpoint=endpoint)


@pytest.mark.parametrize(("endpoint", "message"), BAD_ENDPOINTS)
def test_ambiguous_endpoints_are_refused_saying_why(endpoint: str, message: str) -> None:
    with pytest.raises(ConnectError) as refused:
        validate_register_request(request(endpoint))
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert refused.value.message.startswith("RegisterRequest.flowwatch_endpoint ")
    assert message in refused.value.message, refused.value.message
    assert "s3cret" not in refused.value.message


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_plain_endpoints_with_port_prefix_or_ipv6_literal_are_accepted(endpoint: str) -> None:
    assert endpoint_url_problem(endpoint) == ""
    validate_register_request(request(endpoint))


@pytest.mark.parametrize(("endpoint", "message"), BAD_ENDPOINTS)
def test_the_sdk_refuses_the_same_endpoints_before_dialing(endpoint: str, message: str) -> None:
    with pytest.raises(ValueError, match="local_endpoint") as refused:
        ClientOptions("http://127.0.0.1:8091", "orders", endpoint)
    assert message in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_the_sdk_accepts_what_the_gateway_accepts(endpoint: str) -> None:
    assert ClientOptions("http://127.0.0.1:8091", "orders", endpoint).local_endpoint == endpoint


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:s3cret@orders:8080/p", "http://user:***@orders:8080/p"),
        ("http://user:s3cret@orders:8080", "http://user:***@orders:8080"),
        ("http://u:s3cret#@orders:8080", "http://u:***@orders:8080"),
        ("http://orders:8080/a@b", "http://orders:8080/a@b"),
        ("http://orders:8080", "http://orders:8080"),
    ],
)
def test_endpoints_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# A record written by an older replica (Redis) may still hold credentials; every place
# that shows an endpoint masks the password.
OLD_RECORD = "http://user:s3cret@orders.test:8080"


class _Refusing:
    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        raise ConnectionRefusedError(111, "Connection refused")


def _registry_with_an_old_record() -> InMemoryRegistry:
    registry = InMemoryRegistry()
    # Straight into the registry, as a record read back from Redis would arrive.
    registry.register(
        gateway_service_pb2.RegisterRequest(subsystem_id="orders", flowwatch_endpoint=OLD_RECORD)
    )
    return registry


def test_the_status_page_masks_an_endpoint_password() -> None:
    registry = _registry_with_an_old_record()
    clock = SystemClock()
    facts = GatewayFacts("1.2.3", 1, "ready", [])
    page = render_status_page(registry.instances(), UpstreamHealth(registry, clock), clock, facts)
    assert "s3cret" not in page and "user:***@orders.test:8080" in page


async def test_list_subsystems_masks_an_endpoint_password() -> None:
    registry = _registry_with_an_old_record()

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", _Refusing())

    gateway = Gateway(registry, GatewayConfig(upstream_timeout=1.0), connect=connect)
    answer = await gateway.workflows.list_subsystems(
        wf.ListSubsystemsRequest(), CallContext.with_timeout(5.0)
    )
    shown = answer.subsystems[0].subsystem.metadata["gateway.endpoint"]
    assert shown == "http://user:***@orders.test:8080"


async def test_a_record_with_a_refused_endpoint_is_never_dialed() -> None:
    registry = InMemoryRegistry()
    dialed: list[str] = []

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        dialed.append(endpoint)
        return UpstreamClients(instance_id, endpoint, mode or "h2c", _Refusing())

    gateway = Gateway(registry, GatewayConfig(upstream_timeout=1.0), connect=connect)
    try:
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id="orders", flowwatch_endpoint="http://orders.test/x?admin=1"
            )
        )
        assert gateway.pool.get("orders") is None
        assert dialed == []
    finally:
        await gateway.aclose()
