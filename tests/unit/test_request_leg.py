"""The request leg: unary calls made while a request is served may leave another way.

GuardedTransport checks the endpoint, then hands a unary call to the REQUEST_LEG of
the request being served (under pyvoy: the Envoy the app runs in), with the address
it just checked; streams, calls outside a request, and calls the leg could not send
stay on the shared transport.
"""

from __future__ import annotations

import pyqwest
import pytest

from flowwatch_gateway.proxy.upstream import REQUEST_LEG, GuardedTransport, HttpMode
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9000/flowwatch.v1.RunService/GetRun"


class Answering:
    """A transport (or leg) that records what it was given and answers 200 (or None)."""

    def __init__(self, name: str, *, sends: bool = True) -> None:
        self.name = name
        self.sends = sends
        self.seen: list[tuple[str, HttpMode | None, str | None]] = []

    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        self.seen.append((request.url, None, None))
        return pyqwest.Response(status=200, headers=pyqwest.Headers([("x-by", self.name)]))

    async def leg(
        self, request: pyqwest.Request, mode: HttpMode, dial: str
    ) -> pyqwest.Response | None:
        self.seen.append((request.url, mode, dial))
        if not self.sends:
            return None
        return pyqwest.Response(status=200, headers=pyqwest.Headers([("x-by", self.name)]))


class Leg:
    def __init__(self, answering: Answering) -> None:
        self.execute = answering.leg


def request(content_type: str = "application/proto") -> pyqwest.Request:
    return pyqwest.Request("POST", URL, pyqwest.Headers([("content-type", content_type)]), b"")


def transport(inner: Answering) -> GuardedTransport:
    checker = EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 8091))
    return GuardedTransport(inner, checker, "h2c")


async def test_a_unary_call_in_a_request_takes_the_leg_to_the_checked_address() -> None:
    shared, envoy = Answering("shared"), Answering("envoy")
    token = REQUEST_LEG.set(Leg(envoy))
    try:
        for content_type in ("application/proto", "application/json"):
            answer = await transport(shared).execute(request(content_type))
            assert answer.headers["x-by"] == "envoy"
    finally:
        REQUEST_LEG.reset(token)
    assert envoy.seen == [(URL, "h2c", "127.0.0.1:9000")] * 2
    assert shared.seen == []


async def test_streams_and_calls_outside_a_request_stay_on_the_shared_transport() -> None:
    shared, envoy = Answering("shared"), Answering("envoy")
    assert (await transport(shared).execute(request())).headers["x-by"] == "shared"
    token = REQUEST_LEG.set(Leg(envoy))
    try:
        stream = request("application/connect+proto")
        assert (await transport(shared).execute(stream)).headers["x-by"] == "shared"
    finally:
        REQUEST_LEG.reset(token)
    assert envoy.seen == []
    assert len(shared.seen) == 2


async def test_a_call_the_leg_could_not_send_goes_over_the_shared_transport() -> None:
    shared, envoy = Answering("shared"), Answering("envoy", sends=False)
    token = REQUEST_LEG.set(Leg(envoy))
    try:
        assert (await transport(shared).execute(request())).headers["x-by"] == "shared"
    finally:
        REQUEST_LEG.reset(token)
    assert len(envoy.seen) == 1
    assert len(shared.seen) == 1
