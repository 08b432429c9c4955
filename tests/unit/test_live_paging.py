"""ListRuns through the gateway while subsystems add and change runs, in-process.

Fake subsystems page in the ways real ones do: keyset cursors, offset cursors (the
Go FlowWatch server's decimal offsets), pages that honour `time_range` or ignore it,
and a store that sorts only within a page (the Go in-memory store answers an empty
cursor with the oldest `limit` runs, newest first). Between gateway pages they insert
newer runs and change old ones. Every run that existed when paging began must come
exactly once, in order, and name its subsystem.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyqwest.testing import ASGITransport
from starlette.applications import Starlette

from flowwatch_gateway.api.adapter import EngineAdapter
from flowwatch_gateway.api.context import CallContext
from flowwatch_gateway.api.limits import effective_page_size
from flowwatch_gateway.api.ordering import resolve_order, run_sort_key
from flowwatch_gateway.api.services import flowwatch_routes
from flowwatch_gateway.config import GatewayConfig
from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as run_pb
from flowwatch_gateway.proxy.gateway import Gateway
from flowwatch_gateway.proxy.upstream import HttpMode, UpstreamClients
from flowwatch_gateway.registry.memory import InMemoryRegistry

Kind = Literal["keyset", "offset", "sorted_within_page"]
EPOCH_NS = 1_800_000_000 * 10**9


@dataclass
class FakeSubsystem(EngineAdapter):
    """A subsystem with its own paging habits; `tick` makes it live."""

    name: str
    kind: Kind
    honours_time_range: bool
    names_itself: bool
    runs: list[types_pb2.Run] = field(default_factory=list)

    def add(self, started_ns: int) -> None:
        run = types_pb2.Run(
            id=f"{self.name}-{len(self.runs):04d}",
            workflow_id="wf",
            status=types_pb2.RUN_STATUS_RUNNING,
            subsystem_id=self.name if self.names_itself else "",
        )
        run.started_at.FromNanoseconds(started_ns)
        self.runs.append(run)

    def tick(self, clock_ns: int, inserts: int, changes: int) -> None:
        for offset in range(inserts):
            self.add(clock_ns + offset)
        for run in self.runs[:changes]:
            run.status = types_pb2.RUN_STATUS_SUCCEEDED
            run.duration.FromNanoseconds(clock_ns % 10_000)

    async def list_runs(
        self, request: run_pb.ListRunsRequest, ctx: CallContext
    ) -> run_pb.ListRunsResponse:
        field_name, descending = resolve_order(request.order_by, request.descending)
        limit = effective_page_size(request.pagination.limit)
        selected = [r for r in self.runs if self._in_range(r, request.filter.time_range)]
        cursor = request.pagination.cursor
        if self.kind == "sorted_within_page":
            oldest_first = sorted(selected, key=lambda r: run_sort_key(r, field_name))
            start = int(cursor or 0)
            page = oldest_first[start : start + limit]
            page.sort(key=lambda r: run_sort_key(r, field_name), reverse=descending)
            more = start + limit < len(oldest_first)
            return _answer(page, str(start + limit) if more else "", len(selected))
        ordered = sorted(selected, key=lambda r: run_sort_key(r, field_name), reverse=descending)
        if self.kind == "offset":
            start = int(cursor or 0)
        else:  # keyset: the cursor is the last run's id; continue after it
            ids = [r.id for r in ordered]
            start = ids.index(cursor) + 1 if cursor in ids else 0
        page = ordered[start : start + limit]
        more = start + limit < len(ordered)
        next_cursor = (
            "" if not more else (str(start + limit) if self.kind == "offset" else page[-1].id)
        )
        return _answer(page, next_cursor, len(selected))

    def _in_range(self, run: types_pb2.Run, bounds: types_pb2.TimeRange) -> bool:
        if not self.honours_time_range:
            return True
        started = run.started_at.ToNanoseconds()
        if bounds.HasField("from") and started < getattr(bounds, "from").ToNanoseconds():
            return False
        return not (bounds.HasField("to") and started >= bounds.to.ToNanoseconds())


def _answer(page: list[types_pb2.Run], next_cursor: str, total: int) -> run_pb.ListRunsResponse:
    answer = run_pb.ListRunsResponse(runs=page)
    answer.pagination.next_cursor = next_cursor
    answer.pagination.total_count = total
    return answer


def _gateway(subsystems: list[FakeSubsystem]) -> tuple[Gateway, InMemoryRegistry]:
    apps = {f"http://{s.name}.test": Starlette(routes=flowwatch_routes(s)) for s in subsystems}

    def connect(instance_id: str, endpoint: str, mode: HttpMode | None) -> UpstreamClients:
        return UpstreamClients(instance_id, endpoint, mode or "h2c", ASGITransport(apps[endpoint]))

    registry = InMemoryRegistry()
    gateway = Gateway(registry, GatewayConfig(), connect=connect)
    for s in subsystems:
        registry.register(
            gateway_service_pb2.RegisterRequest(
                subsystem_id=s.name,
                flowwatch_endpoint=f"http://{s.name}.test",
                capabilities=types_pb2.Capabilities(),
                workflows=[types_pb2.WorkflowDefinition(id="wf")],
            )
        )
    return gateway, registry


subsystem_specs = st.lists(
    st.tuples(
        st.sampled_from(["keyset", "offset", "sorted_within_page"]),
        st.booleans(),  # honours time_range
        st.booleans(),  # fills in its own subsystem_id
        st.integers(0, 40),  # runs at the start
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=subsystem_specs,
    limit=st.integers(1, 12),
    inserts=st.integers(0, 4),
    changes=st.integers(0, 5),
    order_by=st.sampled_from(["", "started_at"]),
)
def test_paging_returns_every_existing_run_once_in_order_while_runs_are_added(
    specs: list[tuple[Kind, bool, bool, int]],
    limit: int,
    inserts: int,
    changes: int,
    order_by: str,
) -> None:
    subsystems = [
        FakeSubsystem(f"s{index}", kind, honours, names_itself)
        for index, (kind, honours, names_itself, _) in enumerate(specs)
    ]
    for index, (subsystem, (_, _, _, count)) in enumerate(zip(subsystems, specs, strict=True)):
        for number in range(count):
            # Shared instants across subsystems exercise the tie-break by run id.
            subsystem.add(EPOCH_NS + (number // 2) * 1_000 + index % 2)
    existing = {run.id for s in subsystems for run in s.runs}

    seen = asyncio.run(_page_through(subsystems, limit, inserts, changes, order_by))

    ids = [run.id for run in seen]
    assert len(ids) == len(set(ids)), "a run came twice"
    assert existing <= set(ids), f"missing: {sorted(existing - set(ids))[:5]}"
    keys = [run_sort_key(run, "started_at") for run in seen]
    assert keys == sorted(keys, reverse=True), "runs out of newest-first order"
    assert all(run.subsystem_id for run in seen)


async def _page_through(
    subsystems: list[FakeSubsystem], limit: int, inserts: int, changes: int, order_by: str
) -> list[types_pb2.Run]:
    gateway, _ = _gateway(subsystems)
    seen: list[types_pb2.Run] = []
    cursor = ""
    clock = EPOCH_NS + 10**12
    try:
        for _ in range(500):
            request = run_pb.ListRunsRequest(order_by=order_by, descending=True)
            request.pagination.limit = limit
            request.pagination.cursor = cursor
            page = await gateway.runs.list_runs(request, CallContext.with_timeout(10.0))
            seen.extend(page.runs)
            cursor = page.pagination.next_cursor
            if not cursor:
                return seen
            for subsystem in subsystems:
                clock += 10_000
                subsystem.tick(clock, inserts, changes)
        raise AssertionError("paging never ended")
    finally:
        await gateway.aclose()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=subsystem_specs, limit=st.integers(1, 12), descending=st.booleans())
def test_orders_whose_keys_change_never_repeat_a_run_on_a_page(
    specs: list[tuple[Kind, bool, bool, int]], limit: int, descending: bool
) -> None:
    """duration and status change while paging: no crash, no run twice on one page, and
    paging ends once runs stop being added."""
    subsystems = [
        FakeSubsystem(f"s{index}", kind, honours, names_itself)
        for index, (kind, honours, names_itself, _) in enumerate(specs)
    ]
    for subsystem, (_, _, _, count) in zip(subsystems, specs, strict=True):
        for number in range(count):
            subsystem.add(EPOCH_NS + number * 1_000)

    async def page_through(order_by: str) -> None:
        gateway, _ = _gateway(subsystems)
        cursor = ""
        try:
            for step in range(200):
                request = run_pb.ListRunsRequest(order_by=order_by, descending=descending)
                request.pagination.limit = limit
                request.pagination.cursor = cursor
                page = await gateway.runs.list_runs(request, CallContext.with_timeout(10.0))
                ids = [run.id for run in page.runs]
                assert len(ids) == len(set(ids))
                cursor = page.pagination.next_cursor
                if not cursor:
                    return
                # New runs can sort after the cursor here, so a stream of them would
                # keep paging going: insert for a while, then only change runs.
                for subsystem in subsystems:
                    subsystem.tick(EPOCH_NS + 10**12 + step * 10_000, int(step < 5), 3)
            raise AssertionError("paging never ended")
        finally:
            await gateway.aclose()

    for order_by in ("duration", "status"):
        asyncio.run(page_through(order_by))
