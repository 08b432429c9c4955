"""One WatchRuns call through the gateway: every watched subsystem's run events, live.

Subsystems come and go while a stream is open: one that registers later (within
the request's subsystem filter) joins, one that re-registers is re-attached with its
new connection, one that is removed leaves. A subsystem that answers WatchRuns with
`unimplemented` (subsystems served by the Go FlowWatch server have no StreamService)
is polled with ListRuns instead, and its changes come out as the same events a
streaming subsystem would send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.errors import describe_failure
from flowwatch_gateway.gen.flowwatch.v1 import run_service_pb2 as runs
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.gen.flowwatch.v1 import types_pb2 as types
from flowwatch_gateway.proxy.merge._protobuf import timestamp_of
from flowwatch_gateway.proxy.merge.runs import owned
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import SubsystemInstance

__all__ = ["DEFAULT_POLL_INTERVAL_S", "RunWatch", "run_changes"]

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_S = 2.0
# Runs a poll looks at: the newest ones, where changes happen.
POLL_PAGE_SIZE = 100
FINISHED = frozenset(
    {types.RUN_STATUS_SUCCEEDED, types.RUN_STATUS_FAILED, types.RUN_STATUS_CANCELED}
)
# Events buffered per watch before readers wait for the caller to catch up.
BUFFER = 256

Fingerprint = tuple[int, str, int, int]


@dataclass(frozen=True)
class _Ended:
    instance_id: str
    error: ConnectError | None


def _fingerprint(run: types.Run) -> Fingerprint:
    """What makes a run "changed" for a watcher: status, step, finish and duration."""
    finished = run.finished_at.ToNanoseconds() if run.HasField("finished_at") else 0
    duration = run.duration.ToNanoseconds() if run.HasField("duration") else 0
    return (int(run.status), run.current_step, finished, duration)


def run_changes(
    known: dict[str, Fingerprint] | None, page: Sequence[types.Run], now: datetime
) -> tuple[list[stream.RunEvent], dict[str, Fingerprint]]:
    """Events for what changed between two polls, oldest run first, and the new state.

    `known` None means the first poll: it only sets the baseline. A run not seen before
    is CREATED; one whose fingerprint changed is COMPLETED when it finished, else
    UPDATED. Only the runs of the latest page are remembered (bounded).
    """
    seen = {run.id: _fingerprint(run) for run in page}
    if known is None:
        return [], seen
    events = []
    stamp = timestamp_of(now)
    for run in reversed(page):  # newest-first pages; events in the order runs started
        before = known.get(run.id)
        if before is None:
            kind = stream.RUN_EVENT_TYPE_CREATED
        elif before != seen[run.id]:
            kind = (
                stream.RUN_EVENT_TYPE_COMPLETED
                if run.status in FINISHED
                else stream.RUN_EVENT_TYPE_UPDATED
            )
        else:
            continue
        events.append(stream.RunEvent(event_type=kind, run=run, event_time=stamp))
    return events, seen


class RunWatch:
    """The readers of one WatchRuns call, one per watched subsystem, feeding one queue."""

    def __init__(
        self,
        request: stream.WatchRunsRequest,
        timeout_ms: int | None,
        poll_interval_s: float,
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._request = request
        self._timeout_ms = timeout_ms
        self._poll_interval_s = poll_interval_s
        self._track = track
        self._queue: asyncio.Queue[tuple[str, stream.RunEvent] | _Ended] = asyncio.Queue()
        self._space = asyncio.Semaphore(BUFFER)
        self._readers: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._closing = False
        self.failures: dict[str, ConnectError] = {}
        self.delivered = False
        self.attached_ever = False

    # --- membership --------------------------------------------------------------------
    def wants(self, instance_id: str, registered: Iterable[str]) -> bool:
        """Within the request's subsystem filter; ids no registration has are left to the
        subsystems themselves (a subsystem may report itself under another id)."""
        named = set(self._request.subsystem_ids)
        if not named or instance_id in named:
            return True
        return not named & set(registered)

    def attach(self, instance: SubsystemInstance, clients: UpstreamClients) -> None:
        """Read this registration's events (again, if it re-registered)."""
        current = self._readers.get(instance.id)
        if current is not None and current[0] == instance.epoch:
            return
        if current is not None:
            current[1].cancel()
        self.failures.pop(instance.id, None)
        self.attached_ever = True
        task = asyncio.ensure_future(self._read(clients))
        self._track(task)
        self._readers[instance.id] = (instance.epoch, task)

    def detach(self, instance_id: str) -> None:
        reader = self._readers.pop(instance_id, None)
        if reader is not None:
            reader[1].cancel()

    @property
    def live(self) -> set[str]:
        return {iid for iid, (_, task) in self._readers.items() if not task.done()}

    # --- reading ---------------------------------------------------------------------
    async def _read(self, clients: UpstreamClients) -> None:
        error: ConnectError | None = None
        try:
            async for event in clients.stream.watch_runs(
                self._request, timeout_ms=self._timeout_ms
            ):
                await self._put(clients.instance_id, event)
        except ConnectError as exc:
            if exc.code == Code.UNIMPLEMENTED:
                error = await self._poll(clients)
            else:
                error = exc
        except Exception as exc:  # a bug or a decoding problem: this subsystem only
            log.exception("WatchRuns: stream from %s failed unexpectedly", clients.instance_id)
            error = ConnectError(Code.INTERNAL, "unexpected error reading the subsystem stream")
            error.__cause__ = exc
        if not self._closing:
            self._queue.put_nowait(_Ended(clients.instance_id, error))

    async def _poll(self, clients: UpstreamClients) -> ConnectError | None:
        """ListRuns every interval; the differences become events. Ends only on error."""
        log.info("WatchRuns: %s has no StreamService; polling it", clients.instance_id)
        request = runs.ListRunsRequest(
            filter=runs.RunFilter(
                workflow_ids=self._request.workflow_ids, statuses=self._request.statuses
            ),
            pagination=types.PaginationRequest(limit=POLL_PAGE_SIZE),
        )
        known: dict[str, Fingerprint] | None = (
            {} if self._request.include_initial_snapshot else None
        )
        while True:
            try:
                answer = await clients.runs.list_runs(
                    request, timeout_ms=max(1000, int(self._poll_interval_s * 1000))
                )
            except ConnectError as exc:
                return exc
            page = [owned(run, clients.instance_id) for run in answer.runs]
            events, known = run_changes(known, page, datetime.now(UTC))
            for event in events:
                await self._put(clients.instance_id, event)
            await asyncio.sleep(self._poll_interval_s)

    async def _put(self, instance_id: str, event: stream.RunEvent) -> None:
        await self._space.acquire()
        self._queue.put_nowait((instance_id, event))

    async def next(self) -> tuple[str, stream.RunEvent] | None:
        """The next (subsystem id, event); None once every reader failed before any event.

        Otherwise it waits, also with no reader at all: a subsystem may still register.
        """
        while True:
            item = await self._queue.get()
            if isinstance(item, _Ended):
                self._ended(item)
                if self.all_failed():
                    return None
                continue
            self._space.release()
            self.delivered = True
            return item

    def all_failed(self) -> bool:
        """Every reader ended with an error and nothing was ever delivered."""
        return (
            self.attached_ever
            and not self.delivered
            and not self.live
            and bool(self.failures)
            and self._queue.empty()
        )

    def _ended(self, ended: _Ended) -> None:
        if ended.error is None:
            log.info("WatchRuns: stream from %s ended", ended.instance_id)
            return
        self.failures[ended.instance_id] = ended.error
        log.warning(
            "WatchRuns: stream from %s failed: %s (%s)",
            ended.instance_id,
            describe_failure(ended.error),
            ended.error.message,
        )

    async def aclose(self) -> None:
        self._closing = True
        tasks = [task for _, task in self._readers.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._readers.clear()
