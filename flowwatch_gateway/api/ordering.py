"""The one definition of ListRuns ordering, shared by engines and the gateway's merge.

A k-way merge of per-subsystem pages is only correct if every subsystem sorts by
the same total order, so both sides call these functions.

Rules (as the Go FlowWatch server applies them): an empty `order_by` means
newest first (started_at, descending) whatever `descending` says, because proto3
cannot tell an unset bool from false; otherwise `descending` is taken as given.
Ties on the primary key fall back to started_at, then run id, in the same direction.
"""

from __future__ import annotations

from typing import Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.gen.flowwatch.v1 import types_pb2

__all__ = [
    "ORDER_FIELDS",
    "OrderField",
    "RunSortKey",
    "resolve_order",
    "run_sort_key",
    "sort_runs",
]

OrderField = Literal["started_at", "duration", "status"]
ORDER_FIELDS: tuple[OrderField, ...] = ("started_at", "duration", "status")

RunSortKey = tuple[int, int, str]


def resolve_order(order_by: str, descending: bool) -> tuple[OrderField, bool]:
    """Normalise a request's (order_by, descending) pair; unknown fields are invalid_argument."""
    if order_by == "":
        return "started_at", True
    for field in ORDER_FIELDS:
        if order_by == field:
            return field, descending
    raise ConnectError(
        Code.INVALID_ARGUMENT,
        f"order_by must be one of {', '.join(ORDER_FIELDS)}; got {order_by!r}",
    )


_NANOS_PER_SECOND = 1_000_000_000


def run_sort_key(run: types_pb2.Run, field: OrderField) -> RunSortKey:
    """Ascending sort key; sort with reverse=descending."""
    # seconds * 1e9 + nanos is what ToNanoseconds computes (an unset field gives 0), at a
    # fraction of its cost: a gateway page computes one key per run of every subsystem.
    started_at = run.started_at
    started = started_at.seconds * _NANOS_PER_SECOND + started_at.nanos
    if field == "started_at":
        primary = started
    elif field == "duration":
        duration = run.duration
        primary = duration.seconds * _NANOS_PER_SECOND + duration.nanos
    else:
        primary = int(run.status)
    return (primary, started, run.id)


def sort_runs(
    runs: list[types_pb2.Run], field: OrderField, descending: bool
) -> list[types_pb2.Run]:
    return sorted(runs, key=lambda run: run_sort_key(run, field), reverse=descending)
