"""Pure routing state for the gateway: which instance owns which run.

Run-scoped rpcs (GetRun, RetryRun, ...) carry only a run id. Asking every instance
each time is wasteful, so the gateway remembers owners it has already seen (from
ListRuns answers and successful lookups) in a bounded least-recently-used cache.
Workflow routing needs no state here: it is a lookup in the registry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class RunOwnerCache:
    """Bounded true-LRU map of run id -> instance id.

    Both reads and writes refresh recency, so runs the UI keeps looking at stay
    cached while long ListRuns scans push out only runs nobody asked about again.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"RunOwnerCache capacity must be at least 1; got {capacity}")
        self._capacity = capacity
        self._owners: OrderedDict[str, str] = OrderedDict()
        # Lookups answered / not answered, for the gateway's metrics.
        self.hits = 0
        self.misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def get(self, run_id: str) -> str | None:
        """The instance that owns run_id, or None; a hit makes the entry most recent."""
        instance_id = self._owners.get(run_id)
        if instance_id is not None:
            self.hits += 1
            self._owners.move_to_end(run_id)
        else:
            self.misses += 1
        return instance_id

    def put(self, run_id: str, instance_id: str) -> None:
        """Remember (or move) a run's owner, evicting the least recently used entry if full."""
        self._owners[run_id] = instance_id
        self._owners.move_to_end(run_id)
        while len(self._owners) > self._capacity:
            self._owners.popitem(last=False)

    def put_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Remember several (run id, instance id) pairs; later pairs end up most recent."""
        for run_id, instance_id in pairs:
            self.put(run_id, instance_id)

    def forget(self, run_id: str) -> None:
        """Drop one entry, e.g. after its owner answered not_found."""
        self._owners.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, run_id: object) -> bool:
        """Membership without refreshing recency (for tests and diagnostics)."""
        return run_id in self._owners


def group_by_owner(
    run_ids: Sequence[str], cache: RunOwnerCache
) -> tuple[dict[str, list[str]], list[str]]:
    """Split run ids (e.g. of a bulk action) into per-owner batches and unknown ids.

    Returns ({instance id: run ids in request order}, run ids with no cached owner);
    each distinct id appears once, so one instance is never asked twice for a run.
    The unknown ones must be resolved by asking every instance.
    """
    batches: dict[str, list[str]] = {}
    unknown: list[str] = []
    seen: set[str] = set()
    for run_id in run_ids:
        if run_id in seen:
            continue
        seen.add(run_id)
        owner = cache.get(run_id)
        if owner is None:
            unknown.append(run_id)
        else:
            batches.setdefault(owner, []).append(run_id)
    return batches, unknown
