"""What real servers put in the ASGI scope for a verified client certificate.

A probe app (below) answers with `tls_caller(scope)` and the scope's TLS extension,
served by pyvoy with the options the gateway uses for mTLS (GATEWAY_TLS_CLIENT_CA),
and by uvicorn with its equivalent. pyvoy reports the subject (`client_cert_name`, RFC
4514); uvicorn reports nothing, so there is no certificate caller under uvicorn.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyvoy import PyvoyServer

from flowwatch_gateway.access import tls_caller

pytestmark = pytest.mark.anyio


async def probe(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app: the caller tls_caller finds, and the raw TLS extension."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    caller = tls_caller(scope)
    body = {
        "caller": None if caller is None else [caller.user, caller.source, caller.email],
        "tls": scope.get("extensions", {}).get("tls"),
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and two client certificates."""
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name((NameOID.COMMON_NAME, "test-ca"))
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)
    leaves: dict[str, tuple[x509.Name, x509.ExtendedKeyUsage, x509.GeneralName]] = {
        "server": (
            _name((NameOID.COMMON_NAME, "server")),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ),
        "alice": (
            _name(
                (NameOID.ORGANIZATION_NAME, "Example Org"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
                (NameOID.COMMON_NAME, "alice"),
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
            x509.RFC822Name("alice@example.org"),
        ),
        "smith": (
            _name(
                (NameOID.ORGANIZATION_NAME, "Acme, Inc."),
                (NameOID.COMMON_NAME, "Smith, John"),
                (NameOID.EMAIL_ADDRESS, "john@acme.example"),
            ),
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
            x509.RFC822Name("john@acme.example"),
        ),
    }
    for file, (subject, usage, san) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(usage, critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / file, key, cert)
    return directory


async def _ask(pki: Path, url: str, client: str, *, http2: bool) -> Any:
    context = ssl.create_default_context(cafile=pki / "ca.pem")
    context.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
    async with httpx.AsyncClient(verify=context, http2=http2) as http:
        response = await http.get(f"{url}/whoami")
    assert response.status_code == 200
    return response.json()


async def test_pyvoy_reports_the_verified_subject(pki: Path) -> None:
    server = PyvoyServer(
        "tests.e2e.test_tls_identity_e2e:probe",
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_ca_cert=pki / "ca.pem",
        tls_require_client_certificate=True,
        tls_enable_http3=False,
        lifespan=True,
    )
    async with server:
        url = f"https://127.0.0.1:{server.listener_port}"
        for http2 in (False, True):
            alice = await _ask(pki, url, "alice", http2=http2)
            assert alice == {
                "caller": ["alice", "mtls", None],
                "tls": {"tls_version": 772, "client_cert_name": "CN=alice,OU=ops,O=Example Org"},
            }
        smith = await _ask(pki, url, "smith", http2=True)
        # pyvoy gives the subject only: no chain, so no SAN email; the emailAddress
        # attribute of the subject is read.
        assert smith["tls"]["client_cert_name"] == (
            "emailAddress=john@acme.example,CN=Smith\\, John,O=Acme\\, Inc."
        )
        assert smith["caller"] == ["Smith, John", "mtls", "john@acme.example"]


@pytest.fixture
def uvicorn_probe(pki: Path) -> Iterator[str]:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            probe,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(pki / "server.pem"),
            ssl_keyfile=str(pki / "server.key"),
            ssl_ca_certs=str(pki / "ca.pem"),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_config=None,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def test_uvicorn_reports_no_certificate(pki: Path, uvicorn_probe: str) -> None:
    assert await _ask(pki, uvicorn_probe, "alice", http2=False) == {"caller": None, "tls": None}
