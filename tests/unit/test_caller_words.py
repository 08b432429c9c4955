"""What callers read is the gateway's words, never a Python exception's text; the text
goes to the log, within its budget (errors.py, proxy/fanout.py, registry/register.py)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from starlette.types import Message

from flowwatch_gateway.errors import UpstreamUnreached, from_python_exception
from flowwatch_gateway.log_limit import LogLimit
from flowwatch_gateway.proxy import fanout
from flowwatch_gateway.proxy.fanout import routed_error
from flowwatch_gateway.registry.endpoints import EndpointPolicy
from flowwatch_gateway.registry.keys import ApiKeys
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.registry.redis import RedisRegistry
from flowwatch_gateway.registry.register import UNREADABLE_FIRST_MESSAGE, RegisterService
from flowwatch_gateway.registry.register_front import RegisterFront

PYTHON_TEXT = "Error parsing message with type 'flowwatch.v1.GetRunResponse'"


def made_from(code: Code, message: str, cause: Exception) -> ConnectError:
    """As connectrpc's client makes them: `raise ConnectError(code, str(e)) from e`."""
    try:
        raise ConnectError(code, message) from cause
    except ConnectError as exc:
        return exc


def test_an_answer_of_the_subsystem_reaches_the_caller_as_it_is() -> None:
    answer = ConnectError(Code.FAILED_PRECONDITION, "run r-1 is still running")
    assert not from_python_exception(answer)
    assert routed_error("orders", answer) is answer


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (
            made_from(Code.UNAVAILABLE, "connection reset by peer (os error 104)", OSError()),
            Code.UNAVAILABLE,
            "subsystem orders unavailable",
        ),
        (
            made_from(Code.INTERNAL, "stream error: PROTOCOL_ERROR", RuntimeError()),
            Code.INTERNAL,
            "subsystem orders internal",
        ),
        (
            made_from(Code.INVALID_ARGUMENT, f"unmarshal message: {PYTHON_TEXT}", ValueError()),
            Code.INTERNAL,  # not the caller's argument: the subsystem's answer was unusable
            "subsystem orders answered in a way the gateway could not use (invalid_argument); "
            "see the gateway's log",
        ),
        (
            UpstreamUnreached(Code.UNAVAILABLE, "could not reach the subsystem: dns error"),
            Code.UNAVAILABLE,
            "subsystem orders unavailable",
        ),
    ],
    ids=["reset", "h2 stream error", "undecodable answer", "unreached"],
)
def test_an_error_made_on_the_gateways_side_gets_the_gateways_words(
    error: ConnectError, code: Code, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "flowwatch_gateway.proxy.fanout")
    routed = routed_error("orders", error)
    assert (routed.code, routed.message) == (code, words)
    assert error.message in caplog.text  # the detail stays in the log


def test_failure_lines_have_a_budget_per_subsystem(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    budget = LogLimit(
        logging.getLogger("flowwatch_gateway.proxy.fanout"),
        "subsystem call failure lines",
        per_source=2,
        total=10,
        window_s=60.0,
        clock=lambda: now[0],
        schedule=lambda delay, callback: None,
    )
    monkeypatch.setattr(fanout, "FAILURE_LINES", budget)
    caplog.set_level(logging.INFO, "flowwatch_gateway.proxy.fanout")
    failure = ConnectError(Code.NOT_FOUND, "run r-1 not found")
    for _ in range(50):
        assert routed_error("orders", failure) is failure  # answered every time
    lines = [r.getMessage() for r in caplog.records]
    assert sum("subsystem orders answered NOT_FOUND" in line for line in lines) == 2
    now[0] = 60.0
    routed_error("orders", failure)
    assert any("48 not logged" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_an_undecodable_first_register_message_is_answered_in_the_gateways_words() -> None:
    service = RegisterService(
        InMemoryRegistry(),
        keys=ApiKeys("key"),
        endpoint_policy=EndpointPolicy.for_listener("127.0.0.1", 8091),
        heartbeat=30.0,
    )

    async def fallback(scope: object, receive: object, send: object) -> None:
        raise AssertionError("framed by the front")

    front = RegisterFront(service, fallback, read_max_bytes=1024)
    garbage = b"\xff" * 5
    incoming: list[Message] = [
        {"type": "http.request", "body": b"\x00" + len(garbage).to_bytes(4, "big") + garbage}
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/flowwatch.v1.GatewayService/Register",
        "http_version": "2",
        "client": ("10.1.2.3", 4567),
        "headers": [(b"content-type", b"application/connect+proto")],
    }
    await asyncio.wait_for(front(scope, receive, send), 5)
    end = sent[-1]["body"]
    error = json.loads(end[5:])["error"]
    assert error == {"code": "invalid_argument", "message": UNREADABLE_FIRST_MESSAGE}


def test_readyz_says_redis_is_unreachable_without_the_clients_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = RedisRegistry("redis://:secret@redis.internal:6379/0", heartbeat=1.0)
    caplog.set_level(logging.WARNING, "flowwatch_gateway.registry.redis")
    shared._went_down(ConnectionError("Error 111 connecting to 10.1.2.3:6379. Refused."))
    status = shared.status()
    assert "unreachable" in status and "see the log" in status
    assert "Error 111" not in status and "ConnectionError" not in status
    assert "secret" not in status
    assert "Error 111 connecting to 10.1.2.3:6379" in caplog.text
