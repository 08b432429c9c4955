"""Connections go to the address the endpoint policy checked, never to a second lookup.

GuardedTransport checks a name (EndpointChecker), then sends the request through a
transport pinned to the checked address (pyqwest's dns_overrides): the URL keeps the
name, so Host, :authority and TLS SNI are the name's, and the HTTP client resolves
nothing. The attack itself (a rebinding DNS server) is tests/e2e/test_rebinding.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from pathlib import Path

import pyqwest
import pytest
from connectrpc.code import Code

from flowwatch_gateway.errors import UpstreamUnreached
from flowwatch_gateway.proxy.upstream import (
    GuardedTransport,
    HttpMode,
    SharedTransports,
    read_capped,
)
from flowwatch_gateway.registry.endpoints import EndpointChecker, EndpointPolicy
from tests.support.rebinding import NAME, make_certificates

pytestmark = pytest.mark.anyio


class Recording:
    def __init__(self) -> None:
        self.pinned: list[tuple[HttpMode, str, str]] = []
        self.shared = 0

    async def execute(self, request: pyqwest.Request) -> pyqwest.Response:
        self.shared += 1
        return pyqwest.Response(status=200)

    def pin(self, mode: HttpMode, host: str, dial: str) -> pyqwest.Transport:
        self.pinned.append((mode, host, dial))
        return self


async def test_a_name_is_sent_through_a_transport_pinned_to_its_checked_address() -> None:
    seen = Recording()
    checker = EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 8091))
    guarded = GuardedTransport(seen, checker, "h2c", pin=seen.pin)
    await guarded.execute(pyqwest.Request("POST", "http://localhost:9000/a/B"))
    assert seen.pinned in (
        [("h2c", "localhost", "127.0.0.1:9000")],
        [("h2c", "localhost", "[::1]:9000")],
    )
    # An address is no name: nothing resolves it, the shared transport carries it.
    seen.pinned.clear()
    await guarded.execute(pyqwest.Request("POST", "http://127.0.0.1:9000/a/B"))
    assert seen.pinned == []


async def test_a_name_that_does_not_resolve_is_never_handed_to_the_http_client() -> None:
    seen = Recording()
    checker = EndpointChecker(EndpointPolicy.for_listener("127.0.0.1", 8091))
    guarded = GuardedTransport(seen, checker, "h2c", pin=seen.pin)
    with pytest.raises(UpstreamUnreached) as failed:
        await guarded.execute(pyqwest.Request("POST", "http://no-such-host.invalid:9000/a/B"))
    assert failed.value.code == Code.UNAVAILABLE
    assert "does not resolve" in failed.value.message
    assert seen.pinned == [] and seen.shared == 0


async def test_pinned_transports_are_reused_and_bounded() -> None:
    transports = SharedTransports(pinned_max=2)
    try:
        first = transports.pinned("h2c", "a.example", "127.0.0.1:1")
        assert transports.pinned("h2c", "a.example", "127.0.0.1:1") is first
        assert transports.pinned("http1", "a.example", "127.0.0.1:1") is not first
        transports.pinned("h2c", "b.example", "127.0.0.1:1")  # the first one is let go
        assert transports.pinned("h2c", "a.example", "127.0.0.1:1") is not first
    finally:
        await transports.aclose()


async def test_a_pinned_transport_connects_the_name_to_its_address_without_resolving() -> None:
    """`.invalid` never resolves: the request can only arrive through the pin."""
    hosts: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        hosts.extend(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"host:")
        )
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transports = SharedTransports()
    try:
        pinned = transports.pinned("http1", "sub.flowwatch.invalid", f"127.0.0.1:{port}")
        url = f"http://sub.flowwatch.invalid:{port}/x"
        answer = await pinned.execute(pyqwest.Request("GET", url))
        assert answer.status == 200
        assert await read_capped(answer) == b"ok"
        assert hosts == [f"sub.flowwatch.invalid:{port}".encode()]
    finally:
        await transports.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")
async def test_a_pinned_https_transport_verifies_the_certificate_for_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to an address, the certificate is still checked for the endpoint's name."""
    ca, cert, key = make_certificates(tmp_path)  # for NAME, from a CA of the test's own
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # honoured with tls_include_system_certs

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        writer.close()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    transports = SharedTransports()
    try:
        pinned = transports.pinned("tls", NAME, f"127.0.0.1:{port}")
        answer = await pinned.execute(pyqwest.Request("GET", f"https://{NAME}:{port}/"))
        assert await read_capped(answer) == b"ok"
        other = "other.flowwatch.test"
        wrong = transports.pinned("tls", other, f"127.0.0.1:{port}")
        with pytest.raises(ConnectionError, match="certificate"):
            await wrong.execute(pyqwest.Request("GET", f"https://{other}:{port}/"))
    finally:
        await transports.aclose()
        server.close()
        await server.wait_closed()
