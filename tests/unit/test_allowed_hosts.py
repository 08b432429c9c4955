"""AllowedHosts and HostGuard (GATEWAY_ALLOWED_HOSTS): only the gateway's own host names
are answered, so a page re-pointing its own name at the gateway (DNS rebinding) gets
nothing; the probes answer whatever the host."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowwatch_gateway.serving.hosts import AllowedHosts, HostGuard, host_of
from tests.unit.test_canonical_paths import Recorder, call, scope_for

ALLOWED = AllowedHosts.parse(
    " gateway.example.com, *.flowwatch.internal ,localhost,127.0.0.1,[::1], 2001:db8::0:1, "
)


@pytest.mark.parametrize(
    "header",
    [
        "gateway.example.com",
        "gateway.example.com:8091",
        "GATEWAY.Example.COM",
        "gateway.example.com.",
        "gateway.example.com.:443",
        "eu.flowwatch.internal",
        "a.b.flowwatch.internal:8091",
        "localhost",
        "localhost:5173",
        "127.0.0.1:8091",
        "[::1]",
        "[::1]:8091",
        "[0:0:0:0:0:0:0:1]:8091",
        "[2001:DB8::1]",
    ],
)
def test_allowed(header: str) -> None:
    assert ALLOWED.allows(header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "evil.example",
        "evil.example:8091",
        "gateway.example.com.evil.example",
        "evilgateway.example.com",
        "flowwatch.internal",  # *.x needs a label before .x
        "127.0.0.2",
        "localhost.evil.example",
        "[::2]",
        "::1",  # unbracketed IPv6 is not a valid Host
        "[::1",
        "gateway.example.com:80:80",
        "gateway.example.com:http",
        "gateway.example.com/x",
        "user@gateway.example.com",
        "gateway.example.com ",
        "gateway..example.com",
        ".gateway.example.com",
        "*.flowwatch.internal",
        "gateway.example.com\r\nx: y",
    ],
)
def test_refused(header: str | None) -> None:
    assert not ALLOWED.allows(header)


def test_empty_list_allows_any_host() -> None:
    for text in ("", " ", ",", " , "):
        hosts = AllowedHosts.parse(text)
        assert hosts.any_host
        assert hosts.allows(None) and hosts.allows("evil.example") and hosts.allows("x y")


def test_entries_as_config_gives_them() -> None:
    assert AllowedHosts.of(("Gateway.Example.com.", "[::1]", "")).patterns == (
        "gateway.example.com",
        "::1",
    )


@pytest.mark.parametrize(
    "text", ["gateway.example.com:8091", "http://gateway.example.com", "a b", "[nope]", "x/y"]
)
def test_bad_entries_are_refused_naming_them(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        AllowedHosts.parse(f"localhost,{text}")
    assert repr(text) in str(raised.value)


def test_host_of() -> None:
    assert host_of("Example.COM.:8091") == "example.com"
    assert host_of("[::FFFF:127.0.0.1]:1") == "::ffff:7f00:1"
    assert host_of("a b") is None


# --- the ASGI layer ------------------------------------------------------------------------


def with_host(raw: str, *hosts: bytes, **extra: Any) -> dict[str, Any]:
    scope = scope_for(raw, **extra)
    scope["headers"] = [(b"content-type", b"application/json"), *((b"host", h) for h in hosts)]
    return scope


def run(scope: dict[str, Any], allowed: AllowedHosts = ALLOWED) -> tuple[int, bytes, list[str]]:
    inner = Recorder()
    status, body = asyncio.run(call(HostGuard(inner, allowed), scope))
    return status, body, inner.paths


def test_guard_passes_allowed_hosts() -> None:
    assert run(with_host("/flowwatch.v1.RunService/CancelRun", b"localhost:8091"))[0] == 200


def test_guard_refuses_a_rebinding_host_with_permission_denied() -> None:
    status, body, reached = run(with_host("/status", b"attacker.example:8091", method="GET"))
    assert (status, reached) == (403, [])
    error = json.loads(body)
    assert error["code"] == "permission_denied"
    assert "'attacker.example:8091'" in error["message"]
    assert "GATEWAY_ALLOWED_HOSTS" in error["message"]


@pytest.mark.parametrize("hosts", [(), (b"localhost", b"attacker.example"), (b"bad host",)])
def test_guard_refuses_missing_ambiguous_and_malformed_hosts(hosts: tuple[bytes, ...]) -> None:
    status, body, reached = run(with_host("/metrics", *hosts, method="GET"))
    assert (status, reached) == (403, [])
    message = json.loads(body)["message"]
    assert "bad host" not in message  # only a valid host is shown back
    assert "GATEWAY_ALLOWED_HOSTS" in message


def test_the_same_host_twice_is_one_host() -> None:
    assert run(with_host("/metrics", b"localhost", b"localhost", method="GET"))[0] == 200


@pytest.mark.parametrize("probe", ["/healthz", "/readyz"])
def test_probes_answer_any_host(probe: str) -> None:
    assert run(with_host(probe, b"10.1.2.3:8091", method="GET"))[0] == 200
    assert run(with_host(probe, method="GET"))[0] == 200


@pytest.mark.parametrize("raw", ["/%68ealthz", "/healthz/", "/readyz/x"])
def test_only_the_probes_exact_paths_are_exempt(raw: str) -> None:
    assert run(with_host(raw, b"attacker.example", method="GET"))[0] == 403


def test_grpc_callers_get_a_grpc_status() -> None:
    scope = with_host("/flowwatch.v1.RunService/GetRun", b"attacker.example")
    scope["headers"].append((b"content-type", b"application/grpc"))
    scope["headers"] = [h for h in scope["headers"] if h != (b"content-type", b"application/json")]
    inner = Recorder()
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(HostGuard(inner, ALLOWED)(scope, receive, send))
    headers = dict(sent[0]["headers"])
    assert (sent[0]["status"], headers[b"grpc-status"]) == (200, b"7")
    assert inner.paths == []


def test_no_list_no_check() -> None:
    assert run(with_host("/status", b"attacker.example", method="GET"), AllowedHosts())[0] == 200


def test_lifespan_passes() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> Any:
        return {}

    async def drop(message: Any) -> None:
        return None

    asyncio.run(HostGuard(app, ALLOWED)({"type": "lifespan"}, nothing, drop))
    assert seen == ["lifespan"]
