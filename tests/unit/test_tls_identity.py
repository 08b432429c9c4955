"""tls_caller: the ASGI TLS extension's client certificate as a Caller."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flowwatch_gateway.access import Caller, tls_caller


def scope(tls: dict[str, Any] | None) -> dict[str, Any]:
    extensions: dict[str, Any] = {"http.response.trailers": {}}
    if tls is not None:
        extensions["tls"] = tls
    return {"type": "http", "scheme": "https", "extensions": extensions}


@pytest.mark.parametrize(
    ("name", "user", "email"),
    [
        # What pyvoy 1.3.0 puts there (seen with a real Envoy, tests/e2e/test_tls_identity_e2e.py).
        ("CN=alice,OU=ops,O=Example Org", "alice", None),
        ("emailAddress=j@x.org,CN=Smith\\, John=x,O=Acme", "Smith, John=x", "j@x.org"),
        ("1.2.840.113549.1.9.1=j@x.org,CN=j", "j", "j@x.org"),
        ("CN=Zo\\C3\\AB,O=x", "Zoë", None),
        ("CN=a\\+b+UID=7,O=x", "a+b", None),
        ("cn=lower,CN=second", "lower", None),
        ("O=Acme,OU=robots", "O=Acme,OU=robots", None),  # no CN: the whole subject
        ("CN=,O=x", "CN=,O=x", None),  # an empty CN names nobody
    ],
)
def test_pyvoy_subject_strings(name: str, user: str, email: str | None) -> None:
    caller = tls_caller(scope({"tls_version": 772, "client_cert_name": name}))
    assert caller == Caller(user=user, source="mtls", email=email)


@pytest.mark.parametrize(
    "tls",
    [
        None,  # uvicorn: no TLS extension at all
        {"tls_version": 772},  # TLS without a client certificate
        {"tls_version": 772, "client_cert_name": None},
        {"tls_version": 772, "client_cert_name": ""},
        {"client_cert_name": "CN=mallory", "client_cert_error": "certificate has expired"},
        {"client_cert_name": "CN=#0403616263"},  # BER form: not read
        {"client_cert_name": "CN=dangling\\"},
        {"client_cert_chain": []},
        {"client_cert_chain": ["not a certificate"]},
        "not a mapping",
    ],
)
def test_no_verified_certificate_is_no_caller(tls: Any) -> None:
    assert tls_caller(scope(tls)) is None


def test_no_extensions_at_all() -> None:
    assert tls_caller({"type": "http"}) is None
    assert tls_caller({"type": "http", "extensions": None}) is None


def _certificate(subject: x509.Name, san: list[x509.GeneralName] | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_a_chain_without_a_name_is_read_from_the_certificate() -> None:
    pem = _certificate(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                x509.NameAttribute(NameOID.COMMON_NAME, "carol"),
            ]
        ),
        [x509.RFC822Name("carol@example.org")],
    )
    assert tls_caller(scope({"client_cert_chain": [pem], "client_cert_name": None})) == Caller(
        user="carol", source="mtls", email="carol@example.org"
    )


def test_a_chain_certificate_without_cn_gives_its_subject() -> None:
    pem = _certificate(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme, Inc.")]))
    assert tls_caller(scope({"client_cert_chain": [pem.encode()]})) == Caller(
        user="O=Acme\\, Inc.", source="mtls"
    )
