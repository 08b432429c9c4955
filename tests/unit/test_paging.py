"""The gateway's cursors: signed, versioned, bounded, and refused with invalid_argument."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Collection

import pytest
from connectrpc.code import Code
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.api.ordering import run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2, types_pb2
from flowwatch_gateway.proxy import paging
from flowwatch_gateway.proxy.merge.runs import SubsystemRuns, merge_after
from flowwatch_gateway.proxy.paging import (
    CursorError,
    ListRunsCursor,
    decode_cursor,
    encode_cursor,
    query_fingerprint,
    resume_cursor,
)

KEY = b"cursor-key-for-tests"

cursor_states = st.builds(
    ListRunsCursor,
    query=st.text(max_size=20),
    after=st.tuples(
        st.integers(-(2**62), 2**62), st.integers(-(2**62), 2**62), st.text(max_size=64)
    ),
    total=st.integers(0, 2**40),
)


@given(state=cursor_states)
def test_encoding_round_trips_and_is_deterministic_and_url_safe(state: ListRunsCursor) -> None:
    token = encode_cursor(state, secret=KEY)
    assert decode_cursor(token, secret=KEY) == state
    assert encode_cursor(decode_cursor(token, secret=KEY), secret=KEY) == token
    assert token.startswith("g2.")
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in token)


def assert_rejected(
    token: str, query: str = "q", match: str = "start again without a cursor"
) -> None:
    with pytest.raises(CursorError, match=match) as caught:
        resume_cursor(token, query, secret=KEY)
    assert caught.value.code == Code.INVALID_ARGUMENT


@given(state=cursor_states, position=st.integers(0, 10_000), replacement=st.sampled_from("AQw-_9"))
def test_any_single_character_change_is_rejected(
    state: ListRunsCursor, position: int, replacement: str
) -> None:
    token = encode_cursor(state, secret=KEY)
    position %= len(token)
    if token[position] == replacement:
        return
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(CursorError):
        decode_cursor(tampered, secret=KEY)


@given(token=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_the_decoder_refuses_anything_it_did_not_issue_with_invalid_argument(token: str) -> None:
    """Whatever arrives as a cursor ends as CursorError (invalid_argument), never a crash."""
    for decode in (
        lambda: paging.decode_cursor(token, secret=KEY),
        lambda: paging.decode_offset_cursor(token, secret=KEY),
        lambda: paging.decode_search_cursor(token, "q", secret=KEY),
    ):
        with pytest.raises(CursorError) as caught:
            decode()
        assert caught.value.code == Code.INVALID_ARGUMENT


def test_empty_cursor_means_first_page() -> None:
    assert resume_cursor("", "q", secret=KEY) is None


def test_cursor_for_another_query_is_rejected() -> None:
    desc_query = query_fingerprint(run_service_pb2.RunFilter(), "started_at", True)
    asc_query = query_fingerprint(run_service_pb2.RunFilter(), "started_at", False)
    failed_only = query_fingerprint(
        run_service_pb2.RunFilter(statuses=[types_pb2.RUN_STATUS_FAILED]), "started_at", True
    )
    assert len({desc_query, asc_query, failed_only}) == 3
    token = encode_cursor(ListRunsCursor(desc_query, (5, 5, "r-1"), 40), secret=KEY)
    assert resume_cursor(token, desc_query, secret=KEY) is not None
    assert_rejected(token, asc_query, match="different query")
    assert_rejected(token, failed_only, match="different query")


def test_garbage_and_foreign_cursors_are_rejected() -> None:
    good = encode_cursor(ListRunsCursor("q", (1, 2, "r"), 40), secret=KEY)
    _, body, checksum = good.split(".")
    for token in [
        "20",  # a subsystem's own cursor
        "garbage",
        "g2..",
        "g2.%%%.abc",
        f"g2.{body}",
        f"g2.{body}.{checksum}.extra",
        f"g2.{body}x.{checksum}",
        f"g2.{body}.{checksum[:-1]}",
        "g2." + "A" * 70_000 + ".x",
    ]:
        assert_rejected(token)
    assert_rejected(f"g1.{body}.{checksum}", match="version")


def _sign(payload: bytes, key: bytes = KEY) -> str:
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(key, f"g2.{body}".encode(), hashlib.sha256).digest()[:9]
    return f"g2.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_a_cursor_signed_with_the_key_but_of_the_wrong_shape_is_rejected() -> None:
    assert decode_cursor(_sign(b'{"q":"q","k":[1,2,"r"],"t":3}'), secret=KEY).total == 3
    for payload in [
        b"[]",
        b'{"q":"q"}',
        b'{"q":1,"k":[1,2,"r"],"t":3}',
        b'{"q":"q","k":[1,2],"t":3}',
        b'{"q":"q","k":[1,2,3],"t":3}',
        b'{"q":"q","k":[true,2,"r"],"t":3}',
        b'{"q":"q","k":[1,2,"r"],"t":-1}',
        b'{"q":"q","k":[1,2,"r"],"t":3,"x":0}',
        b"\xff\xfe",
    ]:
        assert_rejected(_sign(payload))


def test_only_the_gateways_key_makes_a_cursor() -> None:
    """Forged with another key (or the empty one anyone could use): refused."""
    payload = b'{"q":"q","k":[1,2,"r"],"t":3}'
    for key in (b"", b"another gateway's key"):
        assert_rejected(_sign(payload, key))


def test_the_cursor_does_not_grow_with_the_number_of_subsystems() -> None:
    """5,000 subsystems behind one page: the next cursor is as long as with one."""

    def cursor_after_first_page(subsystems: int) -> str:
        parts = {}
        for index in range(subsystems):
            run = types_pb2.Run(id=f"run-{index:05d}", subsystem_id=f"subsystem-{index:05d}")
            run.started_at.FromNanoseconds(1_700_000_000_000_000_000 + index)
            parts[f"subsystem-{index:05d}"] = SubsystemRuns([run], has_more=False)
        emitted, more = merge_after(parts, 100, "started_at", True)
        assert more and len(emitted) == 100
        last = run_sort_key(emitted[-1][1], "started_at")
        query = query_fingerprint(run_service_pb2.RunFilter(), "started_at", True)
        return encode_cursor(ListRunsCursor(query, last, total=subsystems), secret=KEY)

    one, many = cursor_after_first_page(1_000), cursor_after_first_page(5_000)
    assert len(many) <= 200
    assert abs(len(many) - len(one)) <= 4  # only the digits of the total differ
    assert resume_cursor(many, decode_cursor(many, secret=KEY).query, secret=KEY) is not None


def test_effective_page_size_follows_the_flowwatch_defaults() -> None:
    assert effective_page_size(0) == 20
    assert effective_page_size(-5) == 20
    assert effective_page_size(15) == 15
    assert effective_page_size(1000) == 100


# --- whatever arrives as a cursor: CursorError (invalid_argument), nothing else ----------

# Every cursor decoder, as the services call them (resume_cursor treats "" as page one).
DECODERS: dict[str, Callable[[str], object]] = {
    "decode_cursor": lambda token: decode_cursor(token, secret=KEY),
    "resume_cursor": lambda token: resume_cursor(token, "q", secret=KEY) if token else None,
    "decode_offset_cursor": lambda token: paging.decode_offset_cursor(token, secret=KEY),
    "decode_search_cursor": lambda token: paging.decode_search_cursor(token, "q", secret=KEY),
}
ISSUED = {
    "g2": encode_cursor(ListRunsCursor("q", (1, 2, "run-1"), 40), secret=KEY),
    "l1": paging.offset_cursor(20, secret=KEY),
    "s1": paging.offset_cursor(20, secret=KEY, query="q"),
}
# Which decoder takes which kind of cursor (resume_cursor: a g2 issued for query "q").
ACCEPTS = {
    "decode_cursor": "g2",
    "resume_cursor": "g2",
    "decode_offset_cursor": "l1",
    "decode_search_cursor": "s1",
}

# Any code point, lone surrogates included (they arrive from JSON "\ud800" escapes),
# with the awkward ones and the separator made common.
any_char = st.characters(codec=None, categories=None) | st.sampled_from(
    "\ud800\udfff\x00\x85\u2028é€😀.="
)
any_text = st.text(alphabet=any_char)
json_text = st.text(alphabet=st.characters(codec="utf-8"))


def refused_by_every_decoder(token: str, *, except_for: Collection[str] = ()) -> None:
    for name, decode in DECODERS.items():
        if name in except_for or (name == "resume_cursor" and token == ""):
            continue
        try:
            decode(token)
        except CursorError as exc:
            assert exc.code == Code.INVALID_ARGUMENT
            assert exc.message.endswith("start again without a cursor"), exc.message
        else:
            raise AssertionError(f"{name} accepted {token!r}")


def signed(version: str, payload: bytes) -> str:
    return paging.seal_token(version, payload, secret=KEY)


def is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


@given(
    token=any_text
    | st.builds(
        lambda version, body, checksum: f"{version}.{body}.{checksum}",
        st.sampled_from(["g2", "l1", "s1", ""]) | any_text,
        any_text,
        any_text,
    )
)
def test_any_string_is_refused_with_invalid_argument(token: str) -> None:
    """Any Unicode, lone surrogates too, in the shape of a cursor or not."""
    refused_by_every_decoder(token)


@given(
    kind=st.sampled_from(sorted(ISSUED)),
    extra=st.integers(-3, 3) | st.integers(0, 100_000),
    filler=st.sampled_from("A_-é\u2028"),
)
def test_cursors_around_and_past_the_length_limit_are_refused(
    kind: str, extra: int, filler: str
) -> None:
    _, body, checksum = ISSUED[kind].split(".")
    padding = max(0, paging.MAX_CURSOR_CHARS + extra - len(ISSUED[kind]))
    refused_by_every_decoder(f"{kind}.{body}{filler * padding}.{checksum}")


@given(
    version=st.sampled_from(sorted(ISSUED)),
    payload=st.binary(max_size=300).filter(lambda data: not is_json(data))
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | json_text,
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
)
def test_signed_valid_base64_of_garbage_or_non_object_json_is_refused(
    version: str, payload: bytes
) -> None:
    """Signed with the gateway's own key, so only the payload checks stand in the way."""
    refused_by_every_decoder(signed(version, payload))


@given(
    kind=st.sampled_from(sorted(ISSUED)),
    position=st.integers(0, 10_000),
    replacement=any_char,
)
def test_an_issued_cursor_with_any_one_character_changed_is_refused(
    kind: str, position: int, replacement: str
) -> None:
    token = ISSUED[kind]
    position %= len(token)
    if token[position] == replacement:
        return
    refused_by_every_decoder(token[:position] + replacement + token[position + 1 :])


@pytest.mark.parametrize("kind", sorted(ISSUED))
def test_a_cursor_of_one_kind_is_refused_by_the_decoders_of_the_others(kind: str) -> None:
    own = {name for name, accepted in ACCEPTS.items() if accepted == kind}
    for name in own:
        DECODERS[name](ISSUED[kind])
    refused_by_every_decoder(ISSUED[kind], except_for=own)
