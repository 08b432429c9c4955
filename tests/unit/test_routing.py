"""RunOwnerCache: claims are kept, never replaced; a true LRU with a hard capacity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.proxy.owners import MAX_CLAIMANTS, RunOwnerCache, group_by_owner


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RunOwnerCache(0)


def test_get_returns_the_settled_owner_and_none_for_unknown() -> None:
    cache = RunOwnerCache(4)
    cache.settle("run-1", "orders")
    assert cache.get("run-1") == "orders"
    assert cache.get("run-2") is None


def test_a_listed_run_has_no_owner_until_a_lookup_settles_it() -> None:
    cache = RunOwnerCache(4)
    cache.claim("run-1", "orders")
    assert cache.get("run-1") is None
    cache.settle("run-1", "orders")
    assert cache.get("run-1") == "orders"
    cache.claim("run-1", "orders")  # the owner listing it again changes nothing
    assert cache.get("run-1") == "orders"


def test_anyone_else_listing_a_settled_run_unsettles_it() -> None:
    cache = RunOwnerCache(4)
    cache.settle("run-1", "orders")
    assert cache.claim("run-1", "attacker") is True
    assert cache.get("run-1") is None
    assert cache.claimants("run-1") == ("orders", "attacker")


def test_a_second_claimant_makes_a_run_contested_and_never_replaces_the_first() -> None:
    cache = RunOwnerCache(4)
    assert cache.claim("run-1", "orders") is False
    assert cache.claim("run-1", "orders") is False  # the same claim again changes nothing
    assert cache.claim("run-1", "attacker") is True
    assert cache.get("run-1") is None  # contested: nobody is routed to
    assert cache.claimants("run-1") == ("orders", "attacker")
    assert cache.claim("run-1", "orders") is False


def test_claimants_per_run_are_bounded() -> None:
    cache = RunOwnerCache(4)
    for number in range(MAX_CLAIMANTS + 5):
        cache.claim("run-1", f"s{number}")
    assert len(cache.claimants("run-1")) == MAX_CLAIMANTS


def test_settle_leaves_the_one_owner_a_lookup_found() -> None:
    cache = RunOwnerCache(4)
    cache.claim("run-1", "orders")
    cache.claim("run-1", "attacker")
    cache.settle("run-1", "orders")
    assert cache.get("run-1") == "orders"


def test_claim_by_all_says_whether_a_new_claim_made_it_contested() -> None:
    cache = RunOwnerCache(4)
    assert cache.claim_by_all("run-1", ["b", "a"]) is True
    assert cache.claim_by_all("run-1", ["a", "b"]) is False
    assert cache.claimants("run-1") == ("a", "b")


def test_disown_drops_one_claimant_and_the_entry_with_the_last() -> None:
    cache = RunOwnerCache(4)
    cache.claim("run-1", "orders")
    cache.claim("run-1", "attacker")
    cache.disown("run-1", "attacker")
    assert cache.claimants("run-1") == ("orders",)
    assert cache.get("run-1") is None  # still to be looked up
    cache.disown("run-1", "orders")
    assert "run-1" not in cache


def test_eviction_is_least_recently_used_not_least_recently_inserted() -> None:
    cache = RunOwnerCache(3)
    cache.settle("a", "i1")
    cache.settle("b", "i1")
    cache.settle("c", "i2")
    assert cache.get("a") == "i1"  # a is now the most recently used
    cache.settle("d", "i2")  # must evict b, the least recently used
    assert "b" not in cache
    assert cache.get("a") == "i1"
    assert cache.get("c") == "i2"
    assert cache.get("d") == "i2"
    assert len(cache) == 3


def test_empty_run_ids_are_never_claimed() -> None:
    cache = RunOwnerCache(3)
    assert cache.claim_many("orders", ["", "a"]) == []
    assert "" not in cache


def test_group_by_owner_batches_known_and_lists_the_rest_once() -> None:
    cache = RunOwnerCache(10)
    for run_id, owner in (("a", "i1"), ("c", "i1"), ("b", "i2"), ("y", "i2")):
        cache.settle(run_id, owner)
    assert cache.claim_many("i1", ["y"]) == ["y"]
    batches, unknown = group_by_owner(["c", "x", "a", "b", "x", "a", "y"], cache)
    assert batches == {"i1": ["c", "a"], "i2": ["b"]}
    assert unknown == ["x", "y"]


@given(
    capacity=st.integers(min_value=1, max_value=6),
    ops=st.lists(
        st.tuples(st.sampled_from(["get", "settle"]), st.integers(0, 9), st.integers(0, 2)),
        max_size=60,
    ),
)
def test_matches_a_reference_lru(capacity: int, ops: list[tuple[str, int, int]]) -> None:
    cache = RunOwnerCache(capacity)
    reference: list[tuple[str, str]] = []  # least recent first
    for op, key_number, owner_number in ops:
        key, owner = f"run-{key_number}", f"inst-{owner_number}"
        found = next((pair for pair in reference if pair[0] == key), None)
        if op == "get":
            assert cache.get(key) == (found[1] if found else None)
            if found:
                reference.remove(found)
                reference.append(found)
        else:
            cache.settle(key, owner)
            if found:
                reference.remove(found)
            reference.append((key, owner))
            del reference[:-capacity]
        assert len(cache) == len(reference) <= capacity
    for key, owner in reference:
        assert key in cache
        assert cache.get(key) == owner
