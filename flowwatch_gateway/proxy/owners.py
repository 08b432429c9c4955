"""Pure routing state for the gateway: which subsystems claim which run.

Per-run rpcs (GetRun, CancelRun, ...) carry only a run id. A run has an owner here
only once a lookup asked every connected subsystem and exactly one claimed it
(`settle`, proxy/per_run.py). Listing a run (ListRuns rows, WatchRuns events) is a
claim too, but one that only ever takes an owner away: a claim by anyone but the
settled owner unsettles the run, so the next call looks again. Claims are kept,
never replaced, so nobody wins a run by answering first or last.

The table is a bounded least-recently-used map; workflow routing needs no state
here: it is a lookup in the registry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

__all__ = ["RunOwnerCache", "group_by_owner"]

# Claimants kept per run: enough to show a conflict, bounded against a flood of them.
MAX_CLAIMANTS = 4


class RunOwnerCache:
    """Bounded true-LRU map of run id -> the subsystems that claim it, and whether a
    lookup settled it.

    Both reads and writes refresh recency, so runs the UI keeps looking at stay
    cached while long ListRuns scans push out only runs nobody asked about again.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"RunOwnerCache capacity must be at least 1; got {capacity}")
        self._capacity = capacity
        # run id -> (claimants, settled by a lookup)
        self._claims: OrderedDict[str, tuple[tuple[str, ...], bool]] = OrderedDict()
        # Lookups answered with one owner / not, for the gateway's metrics.
        self.hits = 0
        self.misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def get(self, run_id: str) -> str | None:
        """The run's settled owner, or None (unknown, only listed, or contested).

        A hit makes the entry most recent.
        """
        entry = self._claims.get(run_id)
        if entry is not None and entry[1] and len(entry[0]) == 1:
            self.hits += 1
            self._claims.move_to_end(run_id)
            return entry[0][0]
        self.misses += 1
        return None

    def claimants(self, run_id: str) -> tuple[str, ...]:
        """Every subsystem known to claim run_id (without refreshing recency)."""
        entry = self._claims.get(run_id)
        return () if entry is None else entry[0]

    def claim(self, run_id: str, instance_id: str) -> bool:
        """Note that `instance_id` claims the run; True when that makes it contested."""
        if not run_id:
            return False
        known = self.claimants(run_id)
        if instance_id in known:
            self._claims.move_to_end(run_id)
            return False
        if len(known) < MAX_CLAIMANTS:
            self._store(run_id, (*known, instance_id), settled=False)
        return bool(known)

    def claim_many(self, instance_id: str, run_ids: Iterable[str]) -> list[str]:
        """Note the subsystem's claim on each run; the run ids that became contested."""
        return [run_id for run_id in run_ids if self.claim(run_id, instance_id)]

    def claim_by_all(self, run_id: str, instance_ids: Iterable[str]) -> bool:
        """Note several subsystems' claims on one run; True when one was new and made
        the run contested."""
        return any([self.claim(run_id, instance_id) for instance_id in sorted(instance_ids)])

    def settle(self, run_id: str, instance_id: str) -> None:
        """Every subsystem was asked and only `instance_id` claims the run."""
        self._store(run_id, (instance_id,), settled=True)

    def disown(self, run_id: str, instance_id: str) -> None:
        """`instance_id` answered that it does not have the run (not_found)."""
        remaining = tuple(c for c in self.claimants(run_id) if c != instance_id)
        if remaining:
            self._claims[run_id] = (remaining, False)
        else:
            self._claims.pop(run_id, None)

    def _store(self, run_id: str, claimants: tuple[str, ...], *, settled: bool) -> None:
        self._claims[run_id] = (claimants, settled)
        self._claims.move_to_end(run_id)
        while len(self._claims) > self._capacity:
            self._claims.popitem(last=False)

    def __len__(self) -> int:
        return len(self._claims)

    def __contains__(self, run_id: object) -> bool:
        """Membership without refreshing recency (for tests and diagnostics)."""
        return run_id in self._claims


def group_by_owner(
    run_ids: Sequence[str], cache: RunOwnerCache
) -> tuple[dict[str, list[str]], list[str]]:
    """Split run ids (e.g. of a bulk action) into per-owner batches and the rest.

    Returns ({instance id: run ids in request order}, run ids with no settled owner);
    each distinct id appears once, so one instance is never asked twice for a run.
    The rest must be looked up by asking every instance.
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
