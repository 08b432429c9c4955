"""RunOwnerCache is a true LRU (reads refresh recency) with a hard capacity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.proxy.owners import RunOwnerCache, group_by_owner


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RunOwnerCache(0)


def test_get_returns_owner_and_none_for_unknown() -> None:
    cache = RunOwnerCache(4)
    cache.put("run-1", "orders")
    assert cache.get("run-1") == "orders"
    assert cache.get("run-2") is None


def test_eviction_is_least_recently_used_not_least_recently_inserted() -> None:
    cache = RunOwnerCache(3)
    cache.put("a", "i1")
    cache.put("b", "i1")
    cache.put("c", "i2")
    assert cache.get("a") == "i1"  # a is now the most recently used
    cache.put("d", "i2")  # must evict b, the least recently used
    assert "b" not in cache
    assert cache.get("a") == "i1"
    assert cache.get("c") == "i2"
    assert cache.get("d") == "i2"
    assert len(cache) == 3


def test_put_of_existing_key_refreshes_and_updates_owner() -> None:
    cache = RunOwnerCache(2)
    cache.put("a", "i1")
    cache.put("b", "i1")
    cache.put("a", "i2")
    cache.put("c", "i1")  # evicts b
    assert "b" not in cache
    assert cache.get("a") == "i2"


def test_put_many_and_forget() -> None:
    cache = RunOwnerCache(10)
    cache.put_many([("a", "i1"), ("b", "i2"), ("c", "i1")])
    assert len(cache) == 3
    assert cache.get("b") == "i2"
    cache.forget("b")
    assert cache.get("b") is None
    assert len(cache) == 2


def test_group_by_owner_batches_known_and_lists_unknown_once() -> None:
    cache = RunOwnerCache(10)
    cache.put_many([("a", "i1"), ("b", "i2"), ("c", "i1")])
    batches, unknown = group_by_owner(["c", "x", "a", "b", "x", "a"], cache)
    assert batches == {"i1": ["c", "a"], "i2": ["b"]}
    assert unknown == ["x"]


@given(
    capacity=st.integers(min_value=1, max_value=6),
    ops=st.lists(
        st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 9), st.integers(0, 2)),
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
            cache.put(key, owner)
            if found:
                reference.remove(found)
            reference.append((key, owner))
            del reference[:-capacity]
        assert len(cache) == len(reference) <= capacity
    for key, owner in reference:
        assert key in cache
        assert cache.get(key) == owner
