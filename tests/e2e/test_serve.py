"""Serving: pyvoy's Envoy settings, TLS/mTLS with ALPN h2, uvicorn mode, exit statuses."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyqwest
import pytest

from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_connect, gateway_service_pb2
from flowwatch_gateway.serving.server import (
    ENVOY_DEFAULT_STREAM_IDLE_TIMEOUT,
    envoy_server,
    stream_idle_timeout,
)
from tests.support.harness import (
    GatewayProcess,
    register_client,
    register_request,
    start_gateway,
    subsystem_states,
)

pytestmark = pytest.mark.anyio


def _connection_managers(config: dict[str, object]) -> list[dict[str, object]]:
    found = []
    for listener in config["static_resources"]["listeners"]:  # type: ignore[index]
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                    found.append(network_filter["typed_config"])
    return found


def test_envoy_config_keeps_long_streams_alive() -> None:
    managers = _connection_managers(
        envoy_server(GatewayConfig(heartbeat=120.0), "/tmp/unused.sock").get_envoy_config()
    )
    assert managers
    for manager in managers:
        assert manager["stream_idle_timeout"] == "720.000s"  # 6 heartbeats
        assert manager["request_timeout"] == "0s"
        # pyvoy's single-app config has no routes, so Envoy's 15 s route timeout never applies.
        assert "routes" not in manager["route_config"]["virtual_hosts"][0]  # type: ignore[index]
    assert stream_idle_timeout(1.0) == ENVOY_DEFAULT_STREAM_IDLE_TIMEOUT


def test_sigint_exits_zero() -> None:
    with start_gateway() as gateway:
        assert gateway.stop(signal.SIGINT) == 0, gateway.logs()
        assert "stopped" in gateway.logs()


def _envoy_child(gateway: GatewayProcess) -> int:
    children = Path(f"/proc/{gateway.proc.pid}/task/{gateway.proc.pid}/children").read_text()
    (pid,) = [int(p) for p in children.split()]
    return pid


def test_envoy_dying_makes_the_gateway_exit_nonzero() -> None:
    with start_gateway() as gateway:
        envoy = _envoy_child(gateway)
        os.kill(envoy, signal.SIGKILL)
        assert gateway.proc.wait(15) == 1
        assert "Envoy exited unexpectedly" in gateway.logs()


def test_port_in_use_fails_with_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with start_gateway(port=port, wait=False) as gateway:
            assert gateway.proc.wait(30) == 1
            assert "Envoy failed to start" in gateway.logs()


def test_uvicorn_serves_the_ui_api_over_http1_and_warns_about_register() -> None:
    with start_gateway(server="uvicorn") as gateway:
        assert httpx.get(f"{gateway.url}/healthz").text == "ok"
        assert subsystem_states(gateway.url) == {}
        assert "uvicorn serves HTTP/1.1 only" in gateway.logs()
        assert gateway.stop() == 0, gateway.logs()


# --- TLS --------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server cert for 127.0.0.1 and a client cert, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d,
    )  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
            cwd=d,
        )  # fmt: skip
    return d


async def test_tls_with_client_certificates_negotiates_h2_and_registers(pki: Path) -> None:
    args = (
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "ca.pem"), "--heartbeat", "200ms",
    )  # fmt: skip
    gateway = start_gateway(*args, wait=False)
    with gateway:
        url = f"https://127.0.0.1:{gateway.port}"
        ssl_context = ssl.create_default_context(cafile=pki / "ca.pem")
        ssl_context.load_cert_chain(pki / "client.pem", pki / "client.key")
        deadline = time.monotonic() + 30
        while True:
            try:
                async with httpx.AsyncClient(verify=ssl_context, http2=True) as probe:
                    ready = await probe.get(f"{url}/readyz")
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline or gateway.proc.poll() is not None:
                    raise AssertionError(gateway.logs()) from None
                await asyncio.sleep(0.2)
        assert ready.status_code == 200
        assert ready.http_version == "HTTP/2"  # ALPN chose h2

        # Without a client certificate the handshake is refused (mTLS).
        anonymous = ssl.create_default_context(cafile=pki / "ca.pem")
        async with httpx.AsyncClient(verify=anonymous) as anon:
            # TLS 1.3 reports the missing certificate after the handshake, as an alert
            # that surfaces either wrapped by httpx or as the raw ssl.SSLError.
            with pytest.raises((httpx.HTTPError, ssl.SSLError)):
                await anon.get(f"{url}/readyz")

        transport = pyqwest.HTTPTransport(
            tls_ca_cert=(pki / "ca.pem").read_bytes(),
            tls_cert=(pki / "client.pem").read_bytes(),
            tls_key=(pki / "client.key").read_bytes(),
            http_version=pyqwest.HTTPVersion.HTTP2,
        )
        register = gateway_service_connect.GatewayServiceClient(
            url, http_client=pyqwest.Client(transport), send_compression=None
        )

        async def requests() -> AsyncIterator[gateway_service_pb2.SubsystemMessage]:
            yield register_request("tls-subsystem")
            await asyncio.sleep(5)  # keep the request side open while pings arrive

        kinds = []
        async for message in register.register(requests()):
            kinds.append(message.WhichOneof("msg"))
            if len(kinds) == 2:
                break
        assert kinds == ["registered", "ping"]
        assert gateway.stop() == 0


# --- long-lived streams -------------------------------------------------------------------


@pytest.mark.slow
async def test_register_stream_outlives_envoy_default_route_timeout() -> None:
    """With a 20 s heartbeat the stream carries no data for 20 s: Envoy must not cut it."""
    with start_gateway("--heartbeat", "20s") as gateway:
        started = time.monotonic()
        async with register_client(gateway.url, register_request("long-lived")) as stream:
            await stream.wait_for("registered")
            await stream.wait_for("ping", within=30)
            held = time.monotonic() - started
            print(f"first ping after {held:.1f}s on a silent stream")
            assert held > 15
            assert not stream.done.is_set(), stream.error
            assert subsystem_states(gateway.url)["long-lived"] == "connected"
