"""A real OpenID Connect issuer on loopback, for tests: discovery, JWKS, and minted tokens.

A small Starlette app served by uvicorn (plain HTTP on 127.0.0.1, a free port) in a
background thread. It serves

- `GET /.well-known/openid-configuration`: `{"issuer": <issuer>, "jwks_uri": ...}`
  (plus whatever `discovery_overrides` holds, which can also replace those two);
- `GET /jwks`: the public halves of the published keys;
- `GET /moved/<name>`: a 302 to `redirects[name]` (to test redirect handling).

API (everything is synchronous and thread-safe; use it from sync or async tests):

    issuer = OidcIssuer()              # picks a port; not serving yet, keys: none
    issuer.url                          # "http://127.0.0.1:<port>": the `iss` to configure
    issuer.start(); issuer.stop()       # serve / stop serving (connections are refused),
                                        # on the same port each time; also `with issuer:`
    kid = issuer.add_key("RS256")       # a new signing key ("RS256" or "ES256"), published
                                        # at once and used by mint() from now on
    issuer.retire_key(kid)              # no longer published (mint(kid=...) still signs)
    issuer.jwks_fetches                 # GET /jwks answered so far (discovery_fetches too)
    issuer.redirects["x"] = url         # GET /moved/x answers 302 to url
    issuer.claims(sub="alice", groups=["ops"])   # iss/aud/sub/iat/exp filled in
    issuer.mint(claims, kid=None, headers={"typ": "at+jwt"})  # a signed JWT; a header
                                        # value of None removes that header (e.g. typ)
    unsigned_token(header, claims, signature=b"")            # any bytes as a "JWT"
    hs256_token(header, claims, secret)                      # HMAC-signed, any secret

`claims()` uses `AUDIENCE` and `issuer.now` (default `time.time()`; set it to the test's
fake clock) for `iat`, and `exp = iat + 300`. `oidc_issuer()` is a generator for
fixtures (a started issuer with one RS256 key, "key-1", stopped on teardown):

    @pytest.fixture
    def issuer() -> Iterator[OidcIssuer]:
        yield from oidc_issuer()
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

__all__ = ["AUDIENCE", "OidcIssuer", "hs256_token", "oidc_issuer", "unsigned_token"]

AUDIENCE = "flowwatch-gateway"


@dataclass
class _Key:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]


class OidcIssuer:
    """See the module docstring."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.now: Callable[[], float] = time.time
        self.discovery_overrides: dict[str, Any] = {}
        self.redirects: dict[str, str] = {}
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._keys: dict[str, _Key] = {}
        self._published: list[str] = []
        self._current: str | None = None
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks", self._jwks),
                Route("/moved/{name}", self._moved),
            ]
        )

    # -- serving -----------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        server = uvicorn.Server(
            uvicorn.Config(
                self._app, host="127.0.0.1", port=self.port, lifespan="off", log_config=None
            )
        )
        thread = threading.Thread(target=server.run, name="oidc-issuer", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test OIDC issuer did not start on port {self.port}")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)

    def __enter__(self) -> OidcIssuer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _discovery(self, request: Request) -> JSONResponse:
        with self._lock:
            self.discovery_fetches += 1
            document = {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}
            document.update(self.discovery_overrides)
        return JSONResponse(document)

    async def _jwks(self, request: Request) -> JSONResponse:
        with self._lock:
            self.jwks_fetches += 1
            keys = [self._keys[kid].jwk for kid in self._published]
        return JSONResponse({"keys": keys})

    async def _moved(self, request: Request) -> Response:
        target = self.redirects.get(request.path_params["name"])
        if target is None:
            return Response(status_code=404)
        return RedirectResponse(target, status_code=302)

    # -- keys and tokens ---------------------------------------------------------

    def add_key(self, alg: str = "RS256", kid: str | None = None) -> str:
        private: Any
        if alg == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        else:
            raise ValueError(f"the test issuer makes RS256 or ES256 keys, not {alg}")
        with self._lock:
            kid = kid or f"key-{len(self._keys) + 1}"
            jwk.update({"kid": kid, "use": "sig", "alg": alg})
            self._keys[kid] = _Key(kid=kid, alg=alg, private=private, jwk=jwk)
            self._published.append(kid)
            self._current = kid
        return kid

    def retire_key(self, kid: str) -> None:
        with self._lock:
            self._published.remove(kid)

    def public_pem(self, kid: str) -> bytes:
        """The PEM of a key's public half (what an HS256 forgery would use as secret)."""
        from cryptography.hazmat.primitives import serialization

        public = self._keys[kid].private.public_key()
        return bytes(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return claims

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        with self._lock:
            key = self._keys[kid or self._current or ""]
        header: dict[str, Any] = {"kid": key.kid}
        header.update(headers or {})
        return jwt.encode(
            self.claims() if claims is None else claims,
            key.private,
            algorithm=key.alg,
            headers={name: value for name, value in header.items() if value is not None},
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with any header and `signature` (such as an `alg: none` token)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A token HMAC-SHA256-signed with `secret` (PyJWT refuses a PEM as an HMAC secret)."""
    header = {**header, "alg": "HS256"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def oidc_issuer() -> Iterator[OidcIssuer]:
    """Generator for fixtures: a started issuer with one RS256 key ("key-1"), stopped on
    teardown."""
    issuer = OidcIssuer()
    issuer.add_key("RS256")
    with issuer:
        yield issuer
