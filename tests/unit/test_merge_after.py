"""merge_after: the k-way merge of one gateway page, against a plain statement of what it must do.

The merge has shortcuts for speed (one subsystem with runs takes a slice; sort keys
computed by the reader are reused); this checks them against the definition: runs
in global order (ties by subsystem id), at most `limit`, stopping right after the
last buffered run of a subsystem that may hold more.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.api.ordering import ORDER_FIELDS, OrderField, RunSortKey, run_sort_key
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2
from flowwatch_gateway.proxy.merge.runs import SubsystemRuns, merge_after


def make_run(subsystem: str, number: int, started_s: int, status: int) -> types_pb2.Run:
    run = types_pb2.Run(id=f"{subsystem}-{number:03d}")
    run.status = status  # type: ignore[assignment]
    run.started_at.seconds = started_s
    run.duration.seconds = started_s % 7
    return run


def reference(
    parts: dict[str, SubsystemRuns], limit: int, field: OrderField, descending: bool
) -> tuple[list[tuple[str, str]], bool]:
    if any(not part.runs and part.has_more for part in parts.values()):
        return [], False
    everything: list[tuple[RunSortKey, str, types_pb2.Run]] = [
        (run_sort_key(run, field), iid, run) for iid, part in parts.items() for run in part.runs
    ]
    everything.sort(key=lambda item: item[1])  # ties by subsystem id, kept by a stable sort
    everything.sort(key=lambda item: item[0], reverse=descending)
    emitted: list[tuple[str, str]] = []
    taken = dict.fromkeys(parts, 0)
    for _, iid, run in everything:
        if len(emitted) == limit:
            break
        emitted.append((iid, run.id))
        taken[iid] += 1
        if taken[iid] == len(parts[iid].runs) and parts[iid].has_more:
            break
    left = any(taken[iid] < len(part.runs) or part.has_more for iid, part in parts.items())
    return emitted, left and bool(emitted)


parts_strategy = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.tuples(
        st.lists(st.tuples(st.integers(0, 20), st.integers(1, 4)), max_size=12),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


@given(
    raw=parts_strategy,
    limit=st.integers(1, 15),
    field=st.sampled_from(list(ORDER_FIELDS)),
    descending=st.booleans(),
    with_keys=st.booleans(),
)
def test_merge_after_matches_its_definition(
    raw: dict[str, tuple[list[tuple[int, int]], bool]],
    limit: int,
    field: OrderField,
    descending: bool,
    with_keys: bool,
) -> None:
    parts = {}
    for iid, (specs, has_more) in raw.items():
        runs = [make_run(iid, n, started, status) for n, (started, status) in enumerate(specs)]
        runs.sort(key=lambda run: run_sort_key(run, field), reverse=descending)
        keys = [run_sort_key(run, field) for run in runs] if with_keys else None
        parts[iid] = SubsystemRuns(runs, has_more, keys)
    emitted, more = merge_after(parts, limit, field, descending)
    assert ([(iid, run.id) for iid, run in emitted], more) == reference(
        parts, limit, field, descending
    )
