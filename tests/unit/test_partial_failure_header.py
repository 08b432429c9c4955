"""The partial-failure header stays small however many subsystems fail."""

from __future__ import annotations

from flowwatch_gateway.api.context import (
    PARTIAL_FAILURE_HEADER,
    PARTIAL_FAILURE_HEADER_MAX_NAMED,
    CallContext,
)


def test_few_failures_are_all_named_in_id_order() -> None:
    ctx = CallContext()
    ctx.add_partial_failure("payments", "unavailable")
    ctx.add_partial_failure("orders", "timed out")
    assert (
        ctx.response_headers[PARTIAL_FAILURE_HEADER] == "orders: timed out, payments: unavailable"
    )


def test_many_failures_name_the_first_ids_and_count_the_rest() -> None:
    ctx = CallContext()
    for k in reversed(range(1000)):
        ctx.add_partial_failure(f"s-{k:04d}", "unavailable")
    header = ctx.response_headers[PARTIAL_FAILURE_HEADER]
    named = [f"s-{k:04d}: unavailable" for k in range(PARTIAL_FAILURE_HEADER_MAX_NAMED)]
    assert header == ", ".join(named) + f", and {1000 - PARTIAL_FAILURE_HEADER_MAX_NAMED} more"
    assert len(header) < 1024
    assert len(ctx.partial_failures) == 1000
