"""Bearer tokens from an OpenID Connect issuer: JWT access tokens (RFC 9068) and ID tokens.

`OidcVerifier` finds the issuer's keys through discovery, keeps them, and checks a
token's signature and claims without ever blocking the event loop: the keys are fetched
in the background with httpx, and an issuer that is down makes `verify` fail with a
retryable `AuthError` instead of stalling requests or the gateway's start-up.

Signatures are checked with PyJWT (and `cryptography`): it is well kept, small, and takes
an explicit list of algorithms for every check, so the token's own header never chooses
how it is verified. joserfc and authlib were considered: both do more than a verifier
needs (JWE, OAuth flows), which is more to review for no gain here. PyJWT's
`PyJWKClient` is not used: it fetches keys synchronously, on the request's thread.
Claims are checked here rather than by PyJWT so that expiry follows the injected clock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt

from flowwatch_gateway.access.identity import AuthError, Caller

__all__ = ["Fetch", "OidcVerifier"]

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]
"""GET one URL: (HTTP status, body). May raise; every failure counts as "issuer down"."""

# Asymmetric algorithms only, each with the key type (and curve) it needs. HS* is never
# accepted: with a symmetric algorithm anyone holding the issuer's *public* key could
# sign tokens. `none` is never accepted either.
_ALGORITHMS: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
_ACCESS_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
_ID_TOKEN_TYPES: Final = frozenset({"jwt", "application/jwt"})

# A bearer token arrives in a request header; anything longer is not one of ours.
_MAX_TOKEN_CHARS: Final = 16 * 1024
# Discovery documents and key sets are small; a bigger answer is not read to the end.
_MAX_DOCUMENT_BYTES: Final = 1024 * 1024
_FETCH_TIMEOUT_S: Final = 5.0
# One discovery plus one key-set fetch, redirects included, never takes longer.
_LOAD_DEADLINE_S: Final = 15.0
_MAX_REDIRECTS: Final = 3
# How long a request waits for a key fetch under way before it is refused (retryable).
_REQUEST_WAIT_S = 3.0
# Retrying an issuer that is down: start soon (it may just be starting too), back off.
_FIRST_RETRY_S: Final = 0.5
_MAX_RETRY_S: Final = 60.0

_KEYS_UNAVAILABLE: Final = "the token issuer's keys are not available yet; try again"


class _IssuerProblem(Exception):
    """The issuer answered, but not with something usable (said in the log only)."""


@dataclass(frozen=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: Any  # a cryptography public key object

    def fits(self, alg: str) -> bool:
        kty, curves = _ALGORITHMS[alg]
        if self.kty != kty or (self.alg is not None and self.alg != alg):
            return False
        return curves is None or self.crv in curves


class _HttpFetch:
    """GET with timeouts and a size cap; redirects only within the same host and port."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(_FETCH_TIMEOUT_S),
            follow_redirects=False,
            headers={"accept": "application/json"},
        )

    async def __call__(self, url: str) -> tuple[int, bytes]:
        target = httpx.URL(url)
        for _ in range(_MAX_REDIRECTS + 1):
            async with self._client.stream("GET", target) as response:
                if not response.is_redirect:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > _MAX_DOCUMENT_BYTES:
                            raise _IssuerProblem(f"{target} answered more than 1 MiB")
                    return response.status_code, bytes(body)
                following = target.join(response.headers.get("location", ""))
                # Another host could be anything the issuer's operator did not mean us to
                # trust; https -> http would drop the transport's protection.
                if (
                    following.host != target.host
                    or following.port != target.port
                    or (target.scheme == "https" and following.scheme != "https")
                ):
                    raise _IssuerProblem(f"{target} redirects to another host or to plain http")
                target = following
        raise _IssuerProblem(f"{url} redirects too often")

    async def aclose(self) -> None:
        await self._client.aclose()


class OidcVerifier:
    """Checks bearer tokens of one issuer for one audience; see the module docstring."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        groups_claim: str = "groups",
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
        leeway_s: float = 60.0,
        refetch_interval_s: float = 30.0,
        refresh_interval_s: float = 900.0,
    ) -> None:
        """`refresh_interval_s`: how often the keys are fetched again in the background,
        so a key the issuer retired stops being accepted without a restart."""
        self._issuer = issuer
        self._audience = audience
        self._groups_claim = groups_claim
        self._own_fetch: _HttpFetch | None = None
        if fetch is None:
            self._own_fetch = fetch = _HttpFetch()
        self._fetch = fetch
        self._clock = clock
        self._leeway_s = leeway_s
        self._refetch_interval_s = refetch_interval_s
        self._refresh_interval_s = refresh_interval_s
        self._discovery_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._jwks_uri: str | None = None
        self._keys: tuple[_Key, ...] | None = None  # None: never loaded
        self._last_fetch_at = -math.inf  # by `clock`, for the unknown-kid rate limit
        self._inflight: asyncio.Task[bool] | None = None
        self._background: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start fetching the keys in the background (and keep them fresh)."""
        if self._background is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No loop yet: `verify` loads the keys on first use instead.
            return
        self._background = loop.create_task(self._keep_keys_fresh())

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._background, self._inflight):
            if task is not None:
                task.cancel()
        for task in (self._background, self._inflight):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._background = self._inflight = None
        if self._own_fetch is not None:
            await self._own_fetch.aclose()

    async def _keep_keys_fresh(self) -> None:
        delay = _FIRST_RETRY_S
        while True:
            if await self._refresh():
                delay = _FIRST_RETRY_S
                await asyncio.sleep(self._refresh_interval_s)
            else:
                # Jitter, so replicas that lost the issuer together do not return together.
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, _MAX_RETRY_S)

    # -- keys --------------------------------------------------------------------

    async def _refresh(self, *, wait: float | None = None) -> bool:
        """Fetch the keys once; concurrent callers share one fetch. True on success.

        `wait`: give up waiting (False) after that long; the fetch goes on.
        """
        if self._closed:
            return False
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._load())
            self._inflight.add_done_callback(self._fetch_done)
        # Shielded: a caller giving up (its request cancelled, or `wait` over) must not
        # cancel the fetch the others wait for.
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(self._inflight)
        except TimeoutError:
            return False

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    def _may_refetch(self) -> bool:
        elapsed = self._clock() - self._last_fetch_at
        # A wall clock set back must not hold refetches off until it catches up.
        return elapsed >= self._refetch_interval_s or elapsed < 0

    async def _load(self) -> bool:
        self._last_fetch_at = self._clock()
        try:
            async with asyncio.timeout(_LOAD_DEADLINE_S):
                if self._jwks_uri is None:
                    self._jwks_uri = await self._discover()
                keys = await self._fetch_keys(self._jwks_uri)
        except Exception as exc:  # any failure of the issuer or of `fetch`: try later
            # Discover again next time: the issuer may have moved its keys.
            self._jwks_uri = None
            reason = str(exc) if isinstance(exc, _IssuerProblem) else type(exc).__name__
            log.warning("OIDC issuer %s: could not fetch its keys (%s)", self._issuer, reason)
            return False
        if not keys:
            log.warning(
                "OIDC issuer %s publishes no signing key this gateway can use", self._issuer
            )
        self._keys = keys
        return True

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        status, body = await self._fetch(url)
        if status != 200:
            raise _IssuerProblem(f"{what} answered HTTP {status}")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _IssuerProblem(f"{what} is not JSON") from exc
        if not isinstance(document, dict):
            raise _IssuerProblem(f"{what} is not a JSON object")
        return document

    async def _discover(self) -> str:
        document = await self._get_json(self._discovery_url, "the discovery document")
        # OpenID Connect Discovery 1.0 section 4.3: the issuer must be exactly ours, or
        # the document (and its keys) belong to someone else.
        if document.get("issuer") != self._issuer:
            raise _IssuerProblem("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise _IssuerProblem("the discovery document has no jwks_uri")
        url = httpx.URL(jwks_uri)
        allowed = ("https",) if self._issuer.startswith("https:") else ("https", "http")
        if url.scheme not in allowed or not url.host:
            raise _IssuerProblem("the discovery document's jwks_uri is not a usable URL")
        return jwks_uri

    async def _fetch_keys(self, jwks_uri: str) -> tuple[_Key, ...]:
        document = await self._get_json(jwks_uri, "the key set")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _IssuerProblem("the key set has no keys list")
        return tuple(key for entry in entries if (key := _signing_key(entry)) is not None)

    def _select(self, kid: str | None, alg: str) -> _Key | None:
        if self._keys is None:
            return None
        if kid is None:
            # A token may omit `kid` (RFC 7515); then only an unambiguous key will do.
            fitting = [key for key in self._keys if key.fits(alg)]
            return fitting[0] if len(fitting) == 1 else None
        for key in self._keys:
            if key.kid == kid and key.fits(alg):
                return key
        return None

    async def _key_for(self, kid: str | None, alg: str) -> _Key:
        key = self._select(kid, alg)
        if key is not None:
            return key
        # Unknown key (rotation?) or no keys yet: fetch again, at most once per
        # refetch interval however many tokens ask, sharing a fetch already under way.
        fetched: bool | None = None
        if self._inflight is not None or self._may_refetch():
            # A request waits a little for a slow issuer, not for as long as a fetch
            # may take: an issuer that hangs must not hang every request with it.
            fetched = await self._refresh(wait=_REQUEST_WAIT_S)
            key = self._select(kid, alg)
            if key is not None:
                return key
        if self._keys is None or fetched is False:
            raise AuthError(_KEYS_UNAVAILABLE, retryable=True)
        if kid is None:
            raise AuthError("the token names no signing key (kid) and no single key fits")
        raise AuthError("the token is signed with a key the issuer does not publish")

    # -- tokens ------------------------------------------------------------------

    async def verify(self, token: str) -> Caller:
        """The caller a bearer token stands for; AuthError when it cannot be accepted."""
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALGORITHMS:
            raise AuthError(
                "the token's signing algorithm is not accepted (accepted: "
                + ", ".join(_ALGORITHMS)
                + ")"
            )
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise AuthError("the token's type (typ) is not accepted")
        kind = "id" if typ is None else _token_kind(typ)
        # We implement no JWS extension, so one the token says we must understand
        # (RFC 7515 section 4.1.11), or an unencoded payload (RFC 7797), is refused.
        if "crit" in header or "b64" in header:
            raise AuthError("the token uses JWS extensions (crit) this gateway does not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("the token is malformed (its kid is not a string)")
        key = await self._key_for(kid, alg)
        try:
            decoded = jwt.PyJWS().decode_complete(token, key=key.key, algorithms=[alg])
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError("the token's signature is not valid") from exc
        claims = _claims(decoded["payload"])
        return self._caller(claims, kind)

    def _caller(self, claims: dict[str, Any], kind: str) -> Caller:
        if claims.get("iss") != self._issuer:
            raise AuthError("the token was issued by another issuer than this gateway trusts")
        audiences = _audiences(claims.get("aud"))
        if self._audience not in audiences:
            raise AuthError("the token is not meant for this gateway (audience)")
        if kind == "id":
            # OpenID Connect Core 3.1.3.7: several audiences need `azp`, and `azp` must
            # then be us.
            azp = claims.get("azp")
            if (len(audiences) > 1 and azp is None) or (azp is not None and azp != self._audience):
                raise AuthError("the ID token is not meant for this gateway (azp)")
        now = self._clock()
        exp = _time_claim(claims, "exp", required=True)
        if exp is not None and now > exp + self._leeway_s:
            raise AuthError("the token has expired")
        nbf = _time_claim(claims, "nbf", required=False)
        if nbf is not None and now + self._leeway_s < nbf:
            raise AuthError("the token is not valid yet")
        iat = _time_claim(claims, "iat", required=False)
        if iat is not None and now + self._leeway_s < iat:
            raise AuthError("the token is not valid yet (issued in the future)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("the token names no subject (sub)")
        email = claims.get("email")
        if not isinstance(email, str) or not email or claims.get("email_verified") is False:
            # An address the issuer says it has not verified identifies nobody.
            email = None
        return Caller(
            user=sub,
            groups=_groups(claims, self._groups_claim),
            source="oidc",
            email=email,
        )


def _signing_key(entry: object) -> _Key | None:
    """One JWKS entry as a verification key, or None when it is not one we may use."""
    if not isinstance(entry, dict):
        return None
    kty = entry.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return None  # symmetric ("oct") or unknown key types are never used
    if entry.get("use", "sig") != "sig":
        return None  # an encryption key
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if "d" in entry:
        return None  # a private key has no place in a published key set
    kid, alg, crv = entry.get("kid"), entry.get("alg"), entry.get("crv")
    if (
        (kid is not None and not isinstance(kid, str))
        or (alg is not None and alg not in _ALGORITHMS)
        or (crv is not None and not isinstance(crv, str))
    ):
        return None
    try:
        parsed = jwt.PyJWK(entry)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        log.debug("skipping a key the issuer publishes that does not parse (kid %r)", kid)
        return None
    return _Key(kid=kid, kty=kty, crv=crv, alg=alg, key=parsed.key)


def _b64decode(segment: str) -> bytes:
    if not segment or "=" in segment:
        raise ValueError("empty or padded segment")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header(token: object) -> dict[str, Any]:
    malformed = AuthError("the token is malformed (not a signed JWT in compact form)")
    if (
        not isinstance(token, str)
        or not token
        or len(token) > _MAX_TOKEN_CHARS
        or not token.isascii()
        or token.count(".") != 2
    ):
        raise malformed
    try:
        header = json.loads(_b64decode(token.split(".", 1)[0]), parse_constant=_no_constant)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise malformed from exc
    if not isinstance(header, dict):
        raise malformed
    return header


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; an `exp` of Infinity would never expire.
    raise ValueError(f"{name} is not a JSON number")


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError("the token's claims are not a JSON object") from exc
    if not isinstance(claims, dict):
        raise AuthError("the token's claims are not a JSON object")
    return claims


def _token_kind(typ: str) -> str:
    lowered = typ.lower()  # media types are case-insensitive (RFC 7515 section 4.1.9)
    if lowered in _ACCESS_TOKEN_TYPES:
        return "access"
    if lowered in _ID_TOKEN_TYPES:
        return "id"
    # Other JWTs from the same issuer (logout tokens, DPoP proofs, ...) are not
    # credentials for calling an API.
    raise AuthError("the token's type (typ) is not accepted: use an access token or an ID token")


def _audiences(aud: object) -> tuple[str, ...]:
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        return tuple(aud)
    raise AuthError("the token names no audience (aud) this gateway can read")


def _time_claim(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(f"the token has no {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"the token's {name} claim is not a number")
    return float(value)


def _groups(claims: dict[str, Any], claim: str) -> frozenset[str]:
    value: object = claims.get(claim)
    if value is None and "." in claim and claim not in claims:
        # A nested claim such as Keycloak's `realm_access.roles`. A claim whose name has
        # dots (`https://example.com/groups`) is found by its full name first.
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    # Refused rather than skipped: leaving out part of what the issuer said about the
    # caller's groups could change what a policy decides.
    raise AuthError(f"the token's {claim} claim is not a list of strings")
