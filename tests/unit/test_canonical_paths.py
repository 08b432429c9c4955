"""CanonicalPaths: a path that is not its own canonical form is 404, never decoded into
another route; in front of the gateway app's every front (Register, passthrough, stack).

Scopes are built as uvicorn and pyvoy build them (tests/e2e/test_front_layers_e2e.py
checks that against the real servers): `path` percent-decoded, `raw_path` as sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import pytest

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.serving.app import create_app
from flowwatch_gateway.serving.canonical import NOT_CANONICAL_MESSAGE, CanonicalPaths, is_canonical

Message = MutableMapping[str, Any]

CANONICAL = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/status",
    "/flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.GatewayService/Register",
    "/a~b_c-d.e",
]
NOT_CANONICAL = [
    "/flowwatch.v1.RunService/Cancel%52un",
    "/flowwatch.v1.RunService%2FCancelRun",
    "/flowwatch.v1.RunService%2fCancelRun",
    "/flowwatch.v1.GatewayService%2FRegister",
    "/%66lowwatch.v1.RunService/CancelRun",
    "//flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService//CancelRun",
    "/./flowwatch.v1.RunService/CancelRun",
    "/x/../flowwatch.v1.RunService/CancelRun",
    "/flowwatch.v1.RunService/%2e%2e/RunService/CancelRun",
    "/flowwatch.v1.RunService/.",
    "/flowwatch.v1.RunService/..",
    "/flowwatch.v1.RunService/CancelRun/",
    "/flowwatch.v1.RunService/CancelRun;x=1",
    "/flowwatch.v1.RunService;x/CancelRun",
    "/flowwatch.v1.RunService\\CancelRun",
    "/flowwatch.v1.RunService%5CCancelRun",
    "/flowwatch.v1.RunService/CancelRun%00",
    "/flowwatch.v1.RunService/CancelRun%3Fa=1",
    "/flowwatch.v1.RunService/Cancel Run",
    "/%68ealthz",
    "/healthz/",
    "/metrics%2F",
    "/st%61tus",
    "http://127.0.0.1:8091/healthz",
    "*",
    "",
    "/caf\u00e9",
]


def scope_for(raw: str, *, method: str = "POST", **extra: Any) -> dict[str, Any]:
    """An HTTP scope as the servers give it: `path` decoded, `raw_path` the bytes sent."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw),
        "raw_path": raw.encode("utf-8"),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8091"), (b"content-type", b"application/json")],
        "server": ("127.0.0.1", 8091),
        "client": ("127.0.0.1", 50000),
        **extra,
    }


async def call(app: Any, scope: dict[str, Any], body: bytes = b"") -> tuple[int, bytes]:
    """Run one request through an ASGI app; (status, body)."""
    sent: list[Message] = []
    requests = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if requests:
            return requests.pop(0)
        await asyncio.Event().wait()  # a client that stays connected
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5.0)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


class Recorder:
    """The inner app: records the paths that reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


@pytest.mark.parametrize("raw", CANONICAL)
def test_canonical_paths_pass_through(raw: str) -> None:
    inner = Recorder()
    status, body = asyncio.run(call(CanonicalPaths(inner), scope_for(raw)))
    assert (status, body) == (200, b"inner")
    assert inner.paths == [raw]


@pytest.mark.parametrize("raw", NOT_CANONICAL)
def test_other_spellings_are_not_found_and_reach_nothing(raw: str) -> None:
    inner = Recorder()
    status, body = asyncio.run(call(CanonicalPaths(inner), scope_for(raw)))
    assert status == 404
    assert json.loads(body) == {"code": "unimplemented", "message": NOT_CANONICAL_MESSAGE}
    assert inner.paths == []


def test_the_refusal_does_not_echo_the_path() -> None:
    status, body = asyncio.run(
        call(CanonicalPaths(Recorder()), scope_for("/%3Cscript%3Ealert(1)%3C/script%3E"))
    )
    assert status == 404
    assert b"script" not in body


def test_a_server_that_rewrote_the_path_is_refused_too() -> None:
    # raw_path canonical, but path differs from it: someone decoded or rewrote it.
    scope = scope_for("/flowwatch.v1.RunService/GetRun")
    scope["path"] = "/flowwatch.v1.RunService/CancelRun"
    assert not is_canonical(scope)


def test_without_raw_path_the_path_itself_is_checked() -> None:
    scope = scope_for("/healthz")
    del scope["raw_path"]
    assert is_canonical(scope)
    scope["path"] = "/healthz/"
    assert not is_canonical(scope)


def test_query_strings_are_not_part_of_the_path() -> None:
    scope = scope_for("/status", method="GET", query_string=b"refresh=%2F..%2F")
    assert is_canonical(scope)


def test_lifespan_and_websockets() -> None:
    inner = Recorder()
    layer = CanonicalPaths(inner)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    asyncio.run(layer({**scope_for("/x%2Fy"), "type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert inner.paths == []
    lifespan_seen: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        lifespan_seen.append(scope["type"])

    asyncio.run(CanonicalPaths(lifespan_app)({"type": "lifespan"}, receive, send))
    assert lifespan_seen == ["lifespan"]


# --- the gateway app: the layer is in front of Register, the passthrough and the stack ----


@pytest.fixture(scope="module")
def gateway_app() -> Any:
    return create_app(GatewayConfig())


@pytest.mark.parametrize(
    "raw",
    [
        "/%68ealthz",
        "/healthz/",
        "/metrics;x",
        "/st%61tus",
        # The passthrough's paths (per-run calls) and the stack's.
        "/flowwatch.v1.RunService/Get%52un",
        "/flowwatch.v1.RunService%2FCancelRun",
        "/flowwatch.v1.WorkflowService/List%53ubsystems",
        "//flowwatch.v1.WorkflowService/ListSubsystems",
        # The Register front's prefix, decoded.
        "/flowwatch.v1.GatewayService%2FRegister",
        "/flowwatch.v1.GatewayService/Regist%65r",
        "/flowwatch.v1.GatewayService/Register/",
    ],
)
def test_gateway_app_refuses_other_spellings_of_its_paths(gateway_app: Any, raw: str) -> None:
    status, body = asyncio.run(call(gateway_app, scope_for(raw), b"{}"))
    assert status == 404
    assert json.loads(body)["code"] == "unimplemented"


def test_gateway_app_still_answers_canonical_paths(gateway_app: Any) -> None:
    assert asyncio.run(call(gateway_app, scope_for("/healthz", method="GET")))[0] == 200
    # Register over HTTP/1.1 reaches the Register front, which refuses the transport.
    status, body = asyncio.run(
        call(gateway_app, scope_for("/flowwatch.v1.GatewayService/Register"), b"{}")
    )
    assert (status, json.loads(body)["code"]) == (400, "failed_precondition")


def test_gateway_app_keeps_its_starlette_state(gateway_app: Any) -> None:
    # The wrapping is inside the app object: callers still get app.state.
    assert gateway_app.state.config == GatewayConfig()
    assert isinstance(gateway_app.outermost, CanonicalPaths)
