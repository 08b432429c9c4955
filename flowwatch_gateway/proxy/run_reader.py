"""Reading one subsystem's runs past a sort key, whatever kind of paging it does.

A subsystem's cursor is opaque and lives only within one gateway call: every gateway
page starts again from the subsystem's first page, narrowed by `time_range` where the
order allows (merge/runs.py). Nothing assumes that a page is a prefix of a page with
a larger limit: the reader asks for the gateway page's own limit first and then only
follows the subsystem's cursor (asking for full pages, so that a subsystem that
ignores `time_range` is read past the runs already handed out in few calls).

Whether a subsystem's pages come in the requested order across page boundaries is
learned, not assumed: until a subsystem has shown it (a page boundary crossed
strictly in order), the reader reads one page further than needed. A subsystem whose pages are
out of order (some stores sort only within a page) is read to the end and sorted
here. Reading stops after MAX_PAGES pages either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flowwatch_gateway.api.limits import MAX_PAGE_SIZE
from flowwatch_gateway.api.ordering import OrderField, RunSortKey, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.merge.runs import SubsystemRuns, comes_after

__all__ = ["MAX_PAGES", "Page", "Reading", "read_after"]

# Pages read from one subsystem for one gateway page: after the first, pages are full
# (100 runs), so about 5,000 runs of a subsystem whose pages are out of order (or that
# ignores time_range) can be read past.
MAX_PAGES = 50


@dataclass(frozen=True)
class Page:
    runs: list[types_pb2.Run]
    next_cursor: str
    total_count: int


Fetch = Callable[[str, int], Awaitable[Page]]
"""Ask the subsystem for the page at this cursor ("" = first) with this limit."""


@dataclass(frozen=True)
class Reading:
    """What one subsystem contributes to a gateway page, and what was learned about it.

    `ordered`: its pages were seen in order across a page boundary (True), out of
    order (False), or it never needed a second page (None). `truncated`: the page
    budget ran out before its runs past the key were found; they are skipped.
    """

    part: SubsystemRuns
    total_count: int
    ordered: bool | None
    truncated: bool = False


async def read_after(
    fetch: Fetch,
    after: RunSortKey | None,
    limit: int,
    field: OrderField,
    descending: bool,
    ordered: bool | None,
) -> Reading:
    """The subsystem's first `limit` runs past `after` (all of them if its pages are unordered).

    `ordered` is what earlier calls learned about this subsystem (None: not known).
    """
    # run id -> (sort key, run): each run's key is computed once, here, and reused by
    # the sort below and the merge (merge/runs.py), which profiling showed mattered.
    found: dict[str, tuple[RunSortKey, types_pb2.Run]] = {}
    cursor = ""
    previous: int | None = None  # primary sort value of the last run of the previous page
    total = 0
    boundaries_in_order = 0
    for page_number in range(MAX_PAGES):
        page = await fetch(cursor, limit if page_number == 0 else MAX_PAGE_SIZE)
        if page_number == 0:
            total = page.total_count
        keyed = [(run_sort_key(run, field), run) for run in page.runs]
        primaries = [key[0] for key, _ in keyed]
        if ordered is not False:
            if not _in_order(primaries, descending):
                ordered = False
            elif previous is not None and primaries:
                if not _in_order([previous, primaries[0]], descending):
                    ordered = False
                elif previous != primaries[0]:  # a tie at the boundary proves nothing
                    boundaries_in_order += 1
        if primaries:
            previous = primaries[-1]
        for key, run in keyed:
            if after is None or comes_after(key, after, descending):
                found.setdefault(run.id, (key, run))
        cursor = page.next_cursor
        if not cursor:
            learned = ordered if ordered is False or boundaries_in_order else None
            return Reading(_sorted(found, descending, False), total, learned)
        known_in_order = ordered is True or (ordered is None and boundaries_in_order > 0)
        if known_in_order and len(found) >= limit:
            return Reading(_sorted(found, descending, True), total, True)
        # Otherwise read on: for more runs past the key, for the whole of an unordered
        # subsystem, or for one more page to see the order across a boundary.
    # Out of pages. Runs past the key that were found still sort in order when the
    # pages are ordered; otherwise this subsystem's remaining runs are skipped.
    in_order = ordered is not False and bool(found)
    learned = False if ordered is False else (True if boundaries_in_order else None)
    return Reading(_sorted(found, descending, in_order), total, learned, not in_order)


def _in_order(values: list[int], descending: bool) -> bool:
    pairs = itertools.pairwise(values)
    return all(a >= b for a, b in pairs) if descending else all(a <= b for a, b in pairs)


def _sorted(
    found: dict[str, tuple[RunSortKey, types_pb2.Run]], descending: bool, has_more: bool
) -> SubsystemRuns:
    # Keys are unique (they end with the run id), so the runs themselves are never compared.
    pairs = sorted(found.values(), key=_first, reverse=descending)
    return SubsystemRuns([run for _, run in pairs], has_more, [key for key, _ in pairs])


def _first(pair: tuple[RunSortKey, types_pb2.Run]) -> RunSortKey:
    return pair[0]
