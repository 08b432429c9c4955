"""The caller a verified TLS client certificate names (mTLS, `GATEWAY_TLS_CLIENT_CA`).

Servers report the client certificate through the ASGI TLS extension
(`scope["extensions"]["tls"]`): `client_cert_name` (the subject as an RFC 4514 string),
`client_cert_chain` (PEM, client certificate first) and `client_cert_error` (None when
the certificate verified). pyvoy 1.3.0 sets `tls_version` and `client_cert_name` only,
and only on connections whose certificate Envoy verified against the client CA;
uvicorn sets no TLS extension at all, so under uvicorn there is no certificate caller.
The extension is written by the server, never by the client, so it can be believed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from flowwatch_gateway.access.identity import Caller

__all__ = ["tls_caller"]

_EMAIL_ATTRIBUTES: Final = frozenset({"emailaddress", "e", "1.2.840.113549.1.9.1"})


def tls_caller(scope: Mapping[str, Any]) -> Caller | None:
    """The certificate's caller: its (most specific) CN, else its whole subject.

    None when the scope reports no verified client certificate.
    """
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return None
    name = tls.get("client_cert_name")
    if isinstance(name, str) and name:
        return _caller_from_name(name)
    chain = tls.get("client_cert_chain")
    if isinstance(chain, list | tuple) and chain and isinstance(chain[0], str | bytes):
        return _caller_from_pem(chain[0])
    return None


def _caller_from_name(subject: str) -> Caller | None:
    try:
        attributes = _rfc4514(subject)
    except ValueError:
        return None  # not a subject we can read: no identity rather than a wrong one
    common_names = [value for kind, value in attributes if kind == "cn" and value]
    emails = [value for kind, value in attributes if kind in _EMAIL_ATTRIBUTES]
    return Caller(
        user=common_names[0] if common_names else subject,
        source="mtls",
        email=emails[0] if emails else None,
    )


def _caller_from_pem(pem: str | bytes) -> Caller | None:
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
    except ValueError:
        return None
    subject = certificate.subject
    common_names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    emails = subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san_emails = san.value.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        san_emails = []

    def text(value: str | bytes) -> str:
        return value if isinstance(value, str) else value.decode("utf-8", "replace")

    # RFC 4514 writes the most specific RDN first; x509.Name lists it last.
    names = [text(attribute.value) for attribute in common_names if attribute.value]
    user = names[-1] if names else subject.rfc4514_string()
    email = text(emails[-1].value) if emails else (san_emails[0] if san_emails else None)
    return Caller(user=user, source="mtls", email=email)


def _rfc4514(subject: str) -> list[tuple[str, str]]:
    """(lower-case attribute type, value) pairs of an RFC 4514 string, in its order.

    Multi-valued RDNs (`+`) are flattened. A value in the `#hex` (BER) form is refused:
    reading it would need an ASN.1 decoder for a form no server here produces.
    """
    pairs: list[tuple[str, str]] = []
    kind: str | None = None
    current: list[str] = []
    index = 0
    while index < len(subject):
        char = subject[index]
        if char == "\\":
            escaped, index = _unescape(subject, index + 1)
            current.append(escaped)
            continue
        if kind is None and char == "=":
            kind = "".join(current).strip().lower()
            current = []
            if not kind:
                raise ValueError("empty attribute type")
            if subject[index + 1 : index + 2] == "#":
                raise ValueError("BER-encoded attribute value")
        elif kind is not None and char in ",+":
            pairs.append((kind, "".join(current)))
            kind, current = None, []
        else:
            current.append(char)
        index += 1
    if kind is None:
        raise ValueError("attribute without a value")
    pairs.append((kind, "".join(current)))
    return pairs


def _unescape(subject: str, index: int) -> tuple[str, int]:
    """The character escaped at `index` (after a backslash), and where to go on.

    `\\XX` hex pairs make up UTF-8 bytes, so a run of them is decoded together.
    """
    hexdigits = "0123456789abcdefABCDEF"
    raw = bytearray()
    while (
        index + 1 < len(subject) and subject[index] in hexdigits and subject[index + 1] in hexdigits
    ):
        raw.append(int(subject[index : index + 2], 16))
        index += 2
        if not subject.startswith("\\", index) or index + 2 >= len(subject):
            break
        if subject[index + 1] not in hexdigits or subject[index + 2] not in hexdigits:
            break
        index += 1
    if raw:
        return raw.decode("utf-8"), index
    if index >= len(subject):
        raise ValueError("dangling backslash")
    return subject[index], index + 1
