"""OidcVerifier against a real OpenID issuer on loopback (tests/support/issuer.py).

Expiry follows an injected clock, never sleeps; the clock also paces the unknown-kid
refetch limit, so the tests move it on to allow a refetch.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest

from flowwatch_gateway.access import AuthError, Caller, OidcVerifier, oidc
from tests.support.oidc_issuer import (
    AUDIENCE,
    OidcIssuer,
    hs256_token,
    oidc_issuer,
    unsigned_token,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    yield from oidc_issuer()


INTERVAL = 30.0
KEYS_UNAVAILABLE = "the token issuer's keys are not available yet; try again"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(issuer: OidcIssuer) -> Clock:
    clock = Clock()
    issuer.now = clock
    return clock


@pytest.fixture
async def verifier(issuer: OidcIssuer, clock: Clock) -> AsyncIterator[OidcVerifier]:
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock, refetch_interval_s=INTERVAL)
    verifier.start()
    try:
        yield verifier
    finally:
        await verifier.aclose()


async def refused(verifier: OidcVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await verifier.verify(token)
    if len(token) > 8:
        assert token not in caught.value.message  # never echoed
    return caught.value


# -- accepted tokens ----------------------------------------------------------------


async def test_two_users_with_their_groups(issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    alice = issuer.mint(
        issuer.claims(sub="alice", groups=["ops", "dev"], email="alice@example.org")
    )
    bob = issuer.mint(issuer.claims(sub="bob", groups="viewers"))
    assert await verifier.verify(alice) == Caller(
        user="alice", groups=frozenset({"ops", "dev"}), source="oidc", email="alice@example.org"
    )
    assert await verifier.verify(bob) == Caller(
        user="bob", groups=frozenset({"viewers"}), source="oidc"
    )
    assert issuer.jwks_fetches == 1


async def test_es256_keys_work_too(issuer: OidcIssuer, clock: Clock) -> None:
    kid = issuer.add_key("ES256")
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock)
    try:
        caller = await verifier.verify(issuer.mint(kid=kid))
    finally:
        await verifier.aclose()
    assert caller.user == "alice" and not caller.anonymous


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "JWT", None])
async def test_access_and_id_token_types(
    issuer: OidcIssuer, verifier: OidcVerifier, typ: str | None
) -> None:
    assert (await verifier.verify(issuer.mint(headers={"typ": typ}))).user == "alice"


@pytest.mark.parametrize("typ", ["logout+jwt", "dpop+jwt", "secevent+jwt", "JWE", 7])
async def test_other_token_types_are_refused(
    issuer: OidcIssuer, verifier: OidcVerifier, typ: object
) -> None:
    error = await refused(verifier, issuer.mint(headers={"typ": typ}))
    assert "typ" in error.message and not error.retryable


async def test_audience_lists_and_azp(issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    both = [AUDIENCE, "another-client"]
    access = {"typ": "at+jwt"}
    assert await verifier.verify(issuer.mint(issuer.claims(aud=both), headers=access))
    assert await verifier.verify(issuer.mint(issuer.claims(aud=both, azp=AUDIENCE)))
    # ID tokens with several audiences must name us as the authorized party.
    assert "azp" in (await refused(verifier, issuer.mint(issuer.claims(aud=both)))).message
    wrong_azp = issuer.mint(issuer.claims(azp="another-client"))
    assert "azp" in (await refused(verifier, wrong_azp)).message


async def test_nested_and_namespaced_group_claims(issuer: OidcIssuer, clock: Clock) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("realm_access.roles", {"realm_access": {"roles": ["admin"]}}),
        ("https://example.com/groups", {"https://example.com/groups": ["admin"]}),
    ]
    for claim, claims in cases:
        verifier = OidcVerifier(issuer.url, AUDIENCE, groups_claim=claim, clock=clock)
        try:
            caller = await verifier.verify(issuer.mint(issuer.claims(**claims)))
        finally:
            await verifier.aclose()
        assert caller.groups == frozenset({"admin"}), claim


async def test_an_unverified_email_is_left_out(issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    token = issuer.mint(issuer.claims(email="a@example.org", email_verified=False))
    assert (await verifier.verify(token)).email is None


# -- time -----------------------------------------------------------------------------


async def test_expired_after_the_leeway(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    token = issuer.mint()  # exp = now + 300
    clock.advance(300 + 59)
    assert await verifier.verify(token)
    clock.advance(2)
    error = await refused(verifier, token)
    assert error.message == "the token has expired" and not error.retryable


async def test_not_yet_valid_until_nbf_minus_the_leeway(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    token = issuer.mint(issuer.claims(nbf=clock.now + 120))
    assert (await refused(verifier, token)).message == "the token is not valid yet"
    clock.advance(61)
    assert await verifier.verify(token)


async def test_issued_in_the_future(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    token = issuer.mint(issuer.claims(iat=clock.now + 600, exp=clock.now + 900))
    assert "not valid yet" in (await refused(verifier, token)).message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"exp": None}, "no exp claim"),
        ({"exp": "soon"}, "exp claim is not a number"),
        ({"exp": True}, "exp claim is not a number"),
        ({"sub": None}, "no subject"),
        ({"sub": ""}, "no subject"),
        ({"aud": "someone-else"}, "audience"),
        ({"aud": ["someone-else", "x"]}, "audience"),
        ({"aud": None}, "audience"),
        ({"groups": [1, 2]}, "groups claim is not a list of strings"),
        ({"iss": "http://127.0.0.1:1"}, "another issuer"),
    ],
)
async def test_claims_that_are_refused(
    issuer: OidcIssuer, verifier: OidcVerifier, change: dict[str, Any], words: str
) -> None:
    claims = {
        name: value for name, value in {**issuer.claims(), **change}.items() if value is not None
    }
    error = await refused(verifier, issuer.mint(claims))
    assert words in error.message and not error.retryable


async def test_the_issuer_must_match_exactly(issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    for iss in (issuer.url + "/", issuer.url.upper(), issuer.url + "/x"):
        assert (
            "another issuer"
            in (await refused(verifier, issuer.mint(issuer.claims(iss=iss)))).message
        )


async def test_an_infinite_exp_is_refused(issuer: OidcIssuer, verifier: OidcVerifier) -> None:
    # json.dumps writes Infinity, which is not JSON: such an exp would never pass.
    token = issuer.mint(issuer.claims(exp=float("inf")))
    assert "not a JSON object" in (await refused(verifier, token)).message


# -- forged and malformed tokens --------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
async def test_alg_none_is_refused(issuer: OidcIssuer, verifier: OidcVerifier, alg: str) -> None:
    token = unsigned_token({"alg": alg, "kid": "key-1"}, issuer.claims())
    error = await refused(verifier, token)
    assert "algorithm is not accepted" in error.message and not error.retryable


async def test_hs256_signed_with_the_public_key_is_refused(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    pem = issuer.public_pem("key-1")
    for alg_header in ({"kid": "key-1"}, {"kid": "key-1", "typ": "at+jwt"}):
        token = hs256_token(alg_header, issuer.claims(), pem)
        assert "algorithm is not accepted" in (await refused(verifier, token)).message
    # The same token re-labelled RS256 does not verify either.
    _, rest = token.split(".", 1)
    relabelled = jwt.utils.base64url_encode(json.dumps({"alg": "RS256", "kid": "key-1"}).encode())
    assert "signature" in (await refused(verifier, relabelled.decode() + "." + rest)).message


async def test_a_changed_payload_fails_the_signature(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    header, _, signature = issuer.mint().split(".")
    payload = jwt.utils.base64url_encode(json.dumps(issuer.claims(sub="root")).encode())
    token = f"{header}.{payload.decode()}.{signature}"
    assert (await refused(verifier, token)).message == "the token's signature is not valid"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d.e",  # JWE compact form
        "eyJhbGciOiJSUzI1NiJ9.e30.",  # no signature at all
        "ünïcode.x.y",
        "x" * 20_000,
        "W10.e30.c2ln",  # header is a JSON list
        "eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.c2ln",  # kid is a number
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwiY3JpdCI6WyJleHAiXX0.e30.c2ln",  # crit
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIn0=.e30.c2ln",  # padded
    ],
)
async def test_garbage_is_refused_without_fetching(
    issuer: OidcIssuer, verifier: OidcVerifier, token: str
) -> None:
    assert await verifier.verify(issuer.mint())  # keys loaded
    error = await refused(verifier, token)
    assert not error.retryable
    assert issuer.jwks_fetches == 1


async def test_a_signed_payload_that_is_not_json(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    key = issuer._keys["key-1"].private
    token = jwt.PyJWS().encode(b"not json", key, algorithm="RS256", headers={"kid": "key-1"})
    assert "not a JSON object" in (await refused(verifier, token)).message


# -- keys: unknown kids, rotation ----------------------------------------------------------


async def test_an_unknown_kid_refetches_once_then_is_refused(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    assert await verifier.verify(issuer.mint())
    unpublished = issuer.add_key("RS256")
    issuer.retire_key(unpublished)
    token = issuer.mint(kid=unpublished)
    clock.advance(INTERVAL)
    error = await refused(verifier, token)
    assert error.message == "the token is signed with a key the issuer does not publish"
    assert not error.retryable
    assert issuer.jwks_fetches == 2
    assert (await refused(verifier, token)).message == error.message
    assert issuer.jwks_fetches == 2


async def test_a_flood_of_unknown_kids_fetches_once_per_interval(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    assert await verifier.verify(issuer.mint())
    claims = issuer.claims()
    forged = [unsigned_token({"alg": "RS256", "kid": f"nope-{n}"}, claims) for n in range(200)]

    async def attempt(token: str) -> AuthError:
        with pytest.raises(AuthError) as caught:
            await verifier.verify(token)
        return caught.value

    for interval in range(3):
        clock.advance(INTERVAL)
        errors = await asyncio.gather(*(attempt(token) for token in forged))
        assert all(not error.retryable for error in errors)
        errors = await asyncio.gather(*(attempt(token) for token in forged))
        assert issuer.jwks_fetches == 1 + (interval + 1)


async def test_rotation_mid_test(issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock) -> None:
    old_token = issuer.mint()
    assert await verifier.verify(old_token)
    new = issuer.add_key("ES256")
    issuer.retire_key("key-1")
    clock.advance(INTERVAL)
    assert (await verifier.verify(issuer.mint(kid=new))).user == "alice"
    assert issuer.jwks_fetches == 2
    # The refetch dropped the retired key.
    assert "does not publish" in (await refused(verifier, old_token)).message


async def test_keys_are_refreshed_in_the_background(issuer: OidcIssuer, clock: Clock) -> None:
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock, refresh_interval_s=0.05)
    verifier.start()
    try:
        old_token = issuer.mint()
        assert await verifier.verify(old_token)
        issuer.add_key("RS256")
        issuer.retire_key("key-1")
        seen = issuer.jwks_fetches
        while issuer.jwks_fetches < seen + 2:  # noqa: ASYNC110 - another thread counts
            await asyncio.sleep(0.02)
        # No refetch allowed by the clock, yet the retired key is gone.
        assert "does not publish" in (await refused(verifier, old_token)).message
    finally:
        await verifier.aclose()


async def test_unusable_keys_in_the_key_set_are_ignored(issuer: OidcIssuer, clock: Clock) -> None:
    """Keys of the wrong type, for encryption, private, or of another algorithm."""
    good = dict(issuer._keys["key-1"].jwk)
    es_kid = issuer.add_key("ES256")
    es = dict(issuer._keys[es_kid].jwk)
    served = [
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": "ops", "key_ops": ["encrypt"]},
        {**good, "kid": "labelled-es", "alg": "ES256"},
        {**es, "kid": "private", "d": "AAAA"},
        {"kty": "oct", "kid": "oct", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key",
    ]
    documents = {
        f"{issuer.url}/.well-known/openid-configuration": {
            "issuer": issuer.url,
            "jwks_uri": f"{issuer.url}/keys",
        },
        f"{issuer.url}/keys": {"keys": served},
    }

    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, json.dumps(documents[url]).encode()

    verifier = OidcVerifier(issuer.url, AUDIENCE, fetch=fetch, clock=clock)
    try:
        claims = issuer.claims()
        for kid in ("enc", "ops", "labelled-es"):
            token = issuer.mint(claims, kid="key-1", headers={"kid": kid})
            assert "does not publish" in (await refused(verifier, token)).message, kid
        token = issuer.mint(claims, kid=es_kid, headers={"kid": "private"})
        assert "does not publish" in (await refused(verifier, token)).message
        assert (
            "algorithm"
            in (await refused(verifier, hs256_token({"kid": "oct"}, claims, b"secret"))).message
        )
        # A token without kid is refused when no single key fits.
        no_kid = issuer.mint(claims, kid="key-1", headers={"kid": None})
        assert "kid" in (await refused(verifier, no_kid)).message
    finally:
        await verifier.aclose()


async def test_a_token_without_kid_uses_the_only_key(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    assert await verifier.verify(issuer.mint(headers={"kid": None}))


# -- the issuer down ----------------------------------------------------------------------


@pytest.fixture
def down_issuer() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer()  # not started: its port refuses connections
    issuer.add_key("RS256")
    try:
        yield issuer
    finally:
        issuer.stop()


async def test_issuer_down_at_start_then_up_is_picked_up_in_the_background(
    down_issuer: OidcIssuer,
) -> None:
    clock = Clock()
    down_issuer.now = clock
    verifier = OidcVerifier(down_issuer.url, AUDIENCE, clock=clock, refetch_interval_s=INTERVAL)
    verifier.start()  # returns at once, whatever the issuer does
    try:
        token = down_issuer.mint()
        error = await refused(verifier, token)
        assert error.message == KEYS_UNAVAILABLE and error.retryable
        # Within the interval nothing is fetched on demand: refused at once again.
        assert (await refused(verifier, token)).retryable
        down_issuer.start()
        # The clock stands still: only the background retries can pick the keys up.
        while True:
            try:
                caller = await verifier.verify(token)
                break
            except AuthError as error:
                assert error.retryable
                await asyncio.sleep(0.05)
        assert caller.user == "alice"
    finally:
        await verifier.aclose()


async def test_issuer_down_then_up_is_asked_again_on_demand(down_issuer: OidcIssuer) -> None:
    clock = Clock()
    down_issuer.now = clock
    # No start(): verify loads the keys itself, at most once per interval.
    verifier = OidcVerifier(down_issuer.url, AUDIENCE, clock=clock, refetch_interval_s=INTERVAL)
    try:
        token = down_issuer.mint()
        assert (await refused(verifier, token)).retryable
        down_issuer.start()
        clock.advance(INTERVAL)
        assert (await verifier.verify(token)).user == "alice"
        assert down_issuer.discovery_fetches == 1 and down_issuer.jwks_fetches == 1
    finally:
        await verifier.aclose()


async def test_issuer_going_down_later_keeps_known_keys(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    assert await verifier.verify(issuer.mint())
    issuer.stop()
    assert await verifier.verify(issuer.mint(issuer.claims(sub="bob")))
    clock.advance(INTERVAL)
    unknown = issuer.mint(issuer.claims(), kid="key-1", headers={"kid": "key-9"})
    error = await refused(verifier, unknown)
    assert error.message == KEYS_UNAVAILABLE and error.retryable
    issuer.start()
    clock.advance(INTERVAL)
    assert "does not publish" in (await refused(verifier, unknown)).message


async def test_a_discovery_document_for_another_issuer_is_not_used(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    issuer.discovery_overrides["issuer"] = "http://127.0.0.1:1"
    error = await refused(verifier, issuer.mint())
    assert error.retryable and issuer.jwks_fetches == 0


async def test_redirects_only_within_the_issuers_host(issuer: OidcIssuer, clock: Clock) -> None:
    issuer.discovery_overrides["jwks_uri"] = f"{issuer.url}/moved/keys"
    token = issuer.mint()
    # localhost is the same machine, but another host name: not followed.
    issuer.redirects["keys"] = f"http://localhost:{issuer.port}/jwks"
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock)
    try:
        assert (await refused(verifier, token)).retryable
        assert issuer.jwks_fetches == 0
        issuer.redirects["keys"] = "/jwks"
        clock.advance(INTERVAL)
        assert await verifier.verify(token)
    finally:
        await verifier.aclose()


async def test_a_jwks_uri_on_another_host_is_used(issuer: OidcIssuer, clock: Clock) -> None:
    # Big issuers publish their keys on another host; only redirects are held back.
    issuer.discovery_overrides["jwks_uri"] = f"http://localhost:{issuer.port}/jwks"
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock)
    try:
        assert await verifier.verify(issuer.mint())
    finally:
        await verifier.aclose()


async def test_aclose_stops_background_retries(down_issuer: OidcIssuer) -> None:
    verifier = OidcVerifier(down_issuer.url, AUDIENCE)
    verifier.start()
    await asyncio.sleep(0)
    await verifier.aclose()
    error = await refused(verifier, down_issuer.mint())
    assert error.retryable


async def test_an_issuer_that_never_answers_blocks_nothing(
    issuer: OidcIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A black hole (connections accepted, nothing ever answered) as the issuer."""
    monkeypatch.setattr(oidc, "_REQUEST_WAIT_S", 0.3)
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}"
        verifier = OidcVerifier(url, AUDIENCE)
        verifier.start()
        try:
            pending = asyncio.create_task(verifier.verify(issuer.mint()))
            ticks = 0
            for _ in range(20):  # the event loop keeps running other work meanwhile
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20
            # The request gives up waiting for the fetch (which goes on).
            with pytest.raises(AuthError) as caught:
                await pending
            assert caught.value.message == KEYS_UNAVAILABLE and caught.value.retryable
            # Cancelling a waiting request leaves the shared fetch alone.
            another = asyncio.create_task(verifier.verify(issuer.mint()))
            await asyncio.sleep(0.01)
            another.cancel()
            with pytest.raises(asyncio.CancelledError):
                await another
        finally:
            await verifier.aclose()


async def test_concurrent_first_verifies_share_one_fetch(issuer: OidcIssuer, clock: Clock) -> None:
    verifier = OidcVerifier(issuer.url, AUDIENCE, clock=clock)  # no start(): on demand
    try:
        tokens = [issuer.mint(issuer.claims(sub=f"user-{n}")) for n in range(50)]
        callers = await asyncio.gather(*(verifier.verify(token) for token in tokens))
    finally:
        await verifier.aclose()
    assert {caller.user for caller in callers} == {f"user-{n}" for n in range(50)}
    assert issuer.discovery_fetches == 1 and issuer.jwks_fetches == 1


async def test_an_oversized_discovery_document_is_not_used(
    issuer: OidcIssuer, verifier: OidcVerifier
) -> None:
    issuer.discovery_overrides["padding"] = "x" * (1024 * 1024 + 1)
    assert (await refused(verifier, issuer.mint())).retryable


async def test_a_clock_set_back_does_not_hold_refetches_off(
    issuer: OidcIssuer, verifier: OidcVerifier, clock: Clock
) -> None:
    assert await verifier.verify(issuer.mint())
    new = issuer.add_key("RS256")
    clock.advance(-3600)
    token = issuer.mint(issuer.claims(), kid=new)
    assert await verifier.verify(token)
    assert issuer.jwks_fetches == 2
