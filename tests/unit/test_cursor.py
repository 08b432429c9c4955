"""Gateway ListRuns paging: exactly once, in order, one page per instance per call.

An in-memory fake upstream pages like the Go FlowWatch server (decimal offset
cursor, shared ordering, limit clamped to 100), and hypothesis drives the gateway's
plan -> fetch -> merge -> encode loop over random data, orders and page sizes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from connectrpc.code import Code
from google.protobuf import duration_pb2, timestamp_pb2
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.api.ordering import OrderField, resolve_order, run_sort_key, sort_runs
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2, types_pb2
from flowwatch_gateway.proxy.merge.runs import (
    InstancePage,
    MergedPage,
    PageFetch,
    merge_page,
    plan_fetches,
)
from flowwatch_gateway.proxy.paging import (
    CursorError,
    InstanceCursor,
    ListRunsCursor,
    decode_cursor,
    encode_cursor,
    query_fingerprint,
    resume_cursor,
)


@dataclass
class FakeUpstream:
    """One subsystem instance's ListRuns, paging by decimal offset like the Go server."""

    runs: list[types_pb2.Run]
    calls: int = 0

    def list_runs(
        self, cursor: str, limit: int, field: OrderField, descending: bool
    ) -> InstancePage:
        self.calls += 1
        offset = int(cursor) if cursor else 0
        size = effective_page_size(limit)
        ordered = sort_runs(self.runs, field, descending)
        page = ordered[offset : offset + size]
        end = offset + len(page)
        return InstancePage(page, str(end) if end < len(ordered) else "", len(ordered))


@dataclass
class PagingLog:
    pages: list[MergedPage] = field(default_factory=list)
    emitted: list[tuple[str, types_pb2.Run]] = field(default_factory=list)


def make_run(
    run_id: str, status: int, duration_s: int | None, started_s: int | None
) -> types_pb2.Run:
    run = types_pb2.Run(id=run_id, status=types_pb2.RunStatus.Name(status))
    if duration_s is not None:
        run.duration.CopyFrom(duration_pb2.Duration(seconds=duration_s))
    if started_s is not None:
        run.started_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1_700_000_000 + started_s))
    return run


def follow_cursor(
    upstreams: dict[str, FakeUpstream],
    order_by: str,
    descending: bool,
    page_sizes: Sequence[int],
    failures: Sequence[frozenset[str]] = (),
) -> PagingLog:
    """Page through the gateway until next_cursor is empty, checking per-call invariants."""
    field, desc = resolve_order(order_by, descending)
    query = query_fingerprint(run_service_pb2.RunFilter(), field, desc)
    total_runs = sum(len(upstream.runs) for upstream in upstreams.values())
    log = PagingLog()
    token = ""
    for call in range(total_runs + len(failures) + 5):
        limit = page_sizes[call % len(page_sizes)]
        failing = failures[call] if call < len(failures) else frozenset()
        state = resume_cursor(token, query)
        fetches = plan_fetches(state, sorted(upstreams), limit)
        calls_before = {name: upstream.calls for name, upstream in upstreams.items()}
        pages = {
            name: upstreams[name].list_runs(fetch.upstream_cursor, fetch.limit, field, desc)
            for name, fetch in fetches.items()
            if name not in failing
        }
        for name, upstream in upstreams.items():
            assert upstream.calls - calls_before[name] <= 1
        merged = merge_page(state, fetches, pages, limit, field, desc, query=query)
        assert len(merged.runs) <= limit
        assert set(merged.failed) == {name for name in fetches if name in failing}
        log.pages.append(merged)
        log.emitted.extend(merged.runs)
        if merged.next_state is None:
            return log
        if not failing:
            assert merged.runs, "a page that is not the last must not be empty"
            assert merged.total_count == total_runs
        token = encode_cursor(merged.next_state)
    raise AssertionError("paging did not finish")


run_strategy = st.tuples(
    st.integers(1, 6),  # status
    st.one_of(st.none(), st.integers(0, 3)),  # duration seconds: many ties
    st.one_of(st.none(), st.integers(0, 4)),  # started_at offset: many ties
)
data_sets = st.lists(st.lists(run_strategy, max_size=60), min_size=1, max_size=5)
orders = st.tuples(st.sampled_from(["", "started_at", "duration", "status"]), st.booleans())
page_size_lists = st.lists(st.integers(1, 100), min_size=1, max_size=6)


def build_upstreams(
    data: list[list[tuple[int, int | None, int | None]]],
) -> dict[str, FakeUpstream]:
    # Run ids repeat across instances on purpose: ties on the whole sort key.
    return {
        f"inst-{number}": FakeUpstream([make_run(f"r{i}", *spec) for i, spec in enumerate(runs)])
        for number, runs in enumerate(data)
    }


def identities(emitted: Sequence[tuple[str, types_pb2.Run]]) -> list[tuple[str, str]]:
    return [(instance_id, run.id) for instance_id, run in emitted]


def all_identities(upstreams: dict[str, FakeUpstream]) -> set[tuple[str, str]]:
    return {(name, run.id) for name, upstream in upstreams.items() for run in upstream.runs}


@settings(max_examples=150, deadline=None)
@given(data=data_sets, order=orders, page_sizes=page_size_lists)
def test_following_next_cursor_returns_every_run_once_in_global_order(
    data: list[list[tuple[int, int | None, int | None]]],
    order: tuple[str, bool],
    page_sizes: list[int],
) -> None:
    upstreams = build_upstreams(data)
    log = follow_cursor(upstreams, order[0], order[1], page_sizes)

    seen = identities(log.emitted)
    assert len(seen) == len(set(seen))
    assert set(seen) == all_identities(upstreams)

    field, desc = resolve_order(*order)
    keys = [run_sort_key(run, field) for _, run in log.emitted]
    pairs = list(itertools.pairwise(keys))
    assert all((a >= b) if desc else (a <= b) for a, b in pairs)
    assert log.pages[-1].next_state is None


big_data_sets = st.lists(st.lists(run_strategy, min_size=90, max_size=230), min_size=1, max_size=3)


# Shrinking examples this large takes minutes; a failure is reported unshrunk instead.
@settings(max_examples=40, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(data=big_data_sets, order=orders, page_sizes=st.lists(st.integers(30, 100), min_size=1))
def test_paging_stays_ordered_when_pages_approach_the_100_run_cap(
    data: list[list[tuple[int, int | None, int | None]]],
    order: tuple[str, bool],
    page_sizes: list[int],
) -> None:
    # Re-fetching a page with skip + limit > 100 leaves fewer than `limit` unseen
    # runs, so the merge must stop when such an instance runs dry.
    upstreams = build_upstreams(data)
    log = follow_cursor(upstreams, order[0], order[1], page_sizes)
    seen = identities(log.emitted)
    assert sorted(seen) == sorted(all_identities(upstreams))
    field, desc = resolve_order(*order)
    keys = [run_sort_key(run, field) for _, run in log.emitted]
    assert all((a >= b) if desc else (a <= b) for a, b in itertools.pairwise(keys))


@settings(max_examples=100, deadline=None)
@given(
    data=data_sets,
    order=orders,
    page_sizes=page_size_lists,
    failure_masks=st.lists(st.integers(0, 31), max_size=12),
)
def test_an_instance_failing_mid_paging_loses_and_repeats_nothing(
    data: list[list[tuple[int, int | None, int | None]]],
    order: tuple[str, bool],
    page_sizes: list[int],
    failure_masks: list[int],
) -> None:
    upstreams = build_upstreams(data)
    names = sorted(upstreams)
    failures = [
        frozenset(name for bit, name in enumerate(names) if mask >> bit & 1)
        for mask in failure_masks
    ]
    log = follow_cursor(upstreams, order[0], order[1], page_sizes, failures)

    seen = identities(log.emitted)
    assert len(seen) == len(set(seen))
    assert set(seen) == all_identities(upstreams)
    field, desc = resolve_order(*order)
    for name, upstream in upstreams.items():
        own = [run.id for instance_id, run in log.emitted if instance_id == name]
        assert own == [run.id for run in sort_runs(upstream.runs, field, desc)]


def test_first_call_fetches_every_instance_from_the_start() -> None:
    assert plan_fetches(None, ["b", "a"], 25) == {
        "a": PageFetch("", 25, 0),
        "b": PageFetch("", 25, 0),
    }


def test_later_calls_refetch_the_current_page_with_room_after_the_skip() -> None:
    state = ListRunsCursor(
        "q",
        {
            "a": InstanceCursor("40", 7, False, 90),
            "b": InstanceCursor("", 0, True, 3),
            "c": InstanceCursor("opaque-token", 95, False, 500),
        },
    )
    plan = plan_fetches(state, ["a", "b", "c", "registered-later"], 25)
    assert plan == {"a": PageFetch("40", 32, 7), "c": PageFetch("opaque-token", 100, 95)}


def test_plan_rejects_out_of_range_limits() -> None:
    with pytest.raises(ValueError):
        plan_fetches(None, ["a"], 0)
    with pytest.raises(ValueError):
        plan_fetches(None, ["a"], 101)


def test_an_instance_that_left_is_reported_failed_and_keeps_its_place() -> None:
    left = InstanceCursor("20", 3, False, 50)
    state = ListRunsCursor("q", {"a": InstanceCursor("", 0, False, 1), "gone": left})
    fetches = plan_fetches(state, ["a"], 10)
    assert set(fetches) == {"a"}
    page = InstancePage([make_run("x", 1, 1, 1)], "", 1)
    merged = merge_page(state, fetches, {"a": page}, 10, "started_at", True)
    assert merged.failed == ["gone"]
    assert merged.next_state is not None
    assert merged.next_state.instances["gone"] == left
    assert merged.next_state.instances["a"].exhausted
    assert merged.total_count == 51


def test_merge_stops_when_an_instance_with_more_pages_runs_dry() -> None:
    # "a" has further pages; once its only buffered run is sent, b's runs must wait.
    fetches = plan_fetches(None, ["a", "b"], 10)
    pages = {
        "a": InstancePage([make_run("a1", 1, None, 9)], "1", 5),
        "b": InstancePage([make_run("b1", 1, None, 8), make_run("b2", 1, None, 1)], "", 2),
    }
    merged = merge_page(None, fetches, pages, 10, "started_at", True, query="q")
    assert identities(merged.runs) == [("a", "a1")]
    assert merged.next_state == ListRunsCursor(
        "q",
        {"a": InstanceCursor("1", 0, False, 5), "b": InstanceCursor("", 0, False, 2)},
    )
    assert merged.total_count == 7


def test_first_page_merge_needs_the_query() -> None:
    with pytest.raises(ValueError, match="query"):
        merge_page(None, {}, {}, 10, "started_at", True)


def test_nothing_left_means_no_next_state() -> None:
    fetches = plan_fetches(None, ["a"], 10)
    merged = merge_page(
        None, fetches, {"a": InstancePage([], "", 0)}, 10, "status", False, query="q"
    )
    assert merged.runs == []
    assert merged.next_state is None
    assert merged.total_count == 0


cursor_states = st.builds(
    ListRunsCursor,
    query=st.text(max_size=20),
    instances=st.dictionaries(
        st.text(max_size=12),
        st.builds(
            InstanceCursor,
            upstream_cursor=st.text(max_size=30),
            skip=st.integers(0, 99),
            exhausted=st.booleans(),
            total=st.integers(0, 2**40),
        ),
        max_size=6,
    ),
)


@given(state=cursor_states)
def test_encoding_round_trips_and_is_deterministic_and_url_safe(state: ListRunsCursor) -> None:
    token = encode_cursor(state)
    assert decode_cursor(token) == state
    assert encode_cursor(decode_cursor(token)) == token
    assert token.startswith("g1.")
    assert all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in token)


def assert_rejected(
    token: str, query: str = "q", match: str = "start again without a cursor"
) -> None:
    with pytest.raises(CursorError, match=match) as caught:
        resume_cursor(token, query)
    assert caught.value.code == Code.INVALID_ARGUMENT


@given(state=cursor_states, position=st.integers(0, 10_000), replacement=st.sampled_from("AQw-_9"))
def test_any_single_character_change_is_rejected(
    state: ListRunsCursor, position: int, replacement: str
) -> None:
    token = encode_cursor(state)
    position %= len(token)
    if token[position] == replacement:
        return
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(CursorError):
        decode_cursor(tampered)


def test_empty_cursor_means_first_page() -> None:
    assert resume_cursor("", "q") is None


def test_cursor_for_another_query_is_rejected() -> None:
    desc_query = query_fingerprint(run_service_pb2.RunFilter(), "started_at", True)
    asc_query = query_fingerprint(run_service_pb2.RunFilter(), "started_at", False)
    failed_only = query_fingerprint(
        run_service_pb2.RunFilter(statuses=[types_pb2.RUN_STATUS_FAILED]), "started_at", True
    )
    assert len({desc_query, asc_query, failed_only}) == 3
    token = encode_cursor(ListRunsCursor(desc_query, {"a": InstanceCursor("20", 0, False, 40)}))
    assert resume_cursor(token, desc_query) is not None
    assert_rejected(token, asc_query, match="different query")
    assert_rejected(token, failed_only, match="different query")


def test_garbage_and_foreign_cursors_are_rejected() -> None:
    good = encode_cursor(ListRunsCursor("q", {"a": InstanceCursor("20", 1, False, 40)}))
    _, body, checksum = good.split(".")
    for token in [
        "20",  # a subsystem's own cursor
        "garbage",
        "g1..",
        "g1.%%%.abc",
        f"g1.{body}",
        f"g1.{body}.{checksum}.extra",
        f"g1.{body}x.{checksum}",
        f"g1.{body}.{checksum[:-1]}",
        "g1." + "A" * 70_000 + ".x",
    ]:
        assert_rejected(token)
    assert_rejected(f"g9.{body}.{checksum}", match="version")


def test_a_forged_cursor_with_a_valid_checksum_but_wrong_shape_is_rejected() -> None:
    import base64
    import hashlib
    import hmac

    def sign(payload: bytes) -> str:
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        mac = hmac.new(b"", f"g1.{body}".encode(), hashlib.sha256).digest()[:9]
        return f"g1.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    assert decode_cursor(sign(b'{"q":"q","i":[["a","",0,0,0]]}')).query == "q"
    for payload in [
        b"[]",
        b'{"q":"q"}',
        b'{"q":1,"i":[]}',
        b'{"q":"q","i":[["a","",-1,0,0]]}',
        b'{"q":"q","i":[["a","",0,2,0]]}',
        b'{"q":"q","i":[["a","",0,true,0]]}',
        b'{"q":"q","i":[["a","",0,0]]}',
        b'{"q":"q","i":[["a","",0,0,0],["a","",0,0,0]]}',
        b"\xff\xfe",
    ]:
        assert_rejected(sign(payload))


def test_a_secret_makes_cursors_unforgeable_without_it() -> None:
    state = ListRunsCursor("q", {"a": InstanceCursor("", 0, False, 0)})
    token = encode_cursor(state, secret=b"gateway-secret")
    assert decode_cursor(token, secret=b"gateway-secret") == state
    with pytest.raises(CursorError):
        decode_cursor(token)


def test_effective_page_size_follows_the_flowwatch_defaults() -> None:
    assert effective_page_size(0) == 20
    assert effective_page_size(-5) == 20
    assert effective_page_size(15) == 15
    assert effective_page_size(1000) == 100
