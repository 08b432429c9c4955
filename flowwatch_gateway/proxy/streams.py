"""StreamService through the gateway: fan-in of live streams.

WatchRuns follows the registry while it is open (run_watch.py): subsystems that
register later join, re-registrations are re-attached, and subsystems without a
StreamService are polled. WatchStats opens the same stream on every connected
subsystem and fans the events in through one queue as they arrive (no waiting for
the slower ones, so the first event - which is what makes a Connect stream send its
headers - is not delayed). WatchRun relays the stream of the run's owner. An
upstream stream that fails is logged and the others carry on; the call ends with an
error only when every upstream failed before anything was relayed. Upstream streams
get no deadline of their own (only the caller's, when it set one), and are closed
when the gateway stops or the caller goes away (the ASGI guard in
serving/asgi_guard.py reports a departed caller within a second, even on a quiet
stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from flowwatch_gateway.api.context import CallContext, CallerScope
from flowwatch_gateway.errors import describe_failure
from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream
from flowwatch_gateway.proxy.fanout import FanOut, agreed_error, routed_error
from flowwatch_gateway.proxy.merge import live
from flowwatch_gateway.proxy.per_run import PerRunCalls
from flowwatch_gateway.proxy.pool import UpstreamPool
from flowwatch_gateway.proxy.run_watch import DEFAULT_POLL_INTERVAL_S, RunWatch
from flowwatch_gateway.proxy.upstream import UpstreamClients
from flowwatch_gateway.registry.base import Registry, SubsystemInstance

__all__ = ["StreamFanIn", "StreamsProxy"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_STATS_INTERVAL_S = 5
# Events buffered per fan-in before upstream readers wait for the caller to catch up.
FAN_IN_BUFFER = 256
STREAM_CLOSE_TIMEOUT_S = 2.0


def stream_timeout_ms(ctx: CallContext) -> int | None:
    """Long-lived streams get the caller's deadline if it set one, and none otherwise."""
    remaining = ctx.remaining()
    return None if remaining is None else max(1, int(remaining * 1000))


@dataclass(frozen=True)
class _Ended:
    instance_id: str
    error: ConnectError | None


class StreamFanIn(Generic[T]):
    """One reader task per upstream stream, all feeding one queue.

    connectrpc turns a cancelled call into ConnectError(CANCELED); once `aclose`
    has begun such an end is expected and is neither reported nor waited on.
    """

    def __init__(
        self,
        rpc: str,
        targets: Sequence[UpstreamClients],
        open_stream: Callable[[UpstreamClients], AsyncIterator[T]],
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._rpc = rpc
        self._queue: asyncio.Queue[tuple[str, T] | _Ended] = asyncio.Queue()
        self._space = asyncio.Semaphore(FAN_IN_BUFFER)
        self._closing = False
        self.live: set[str] = {t.instance_id for t in targets}
        self.failures: dict[str, ConnectError] = {}
        self.delivered = False
        self._tasks = [asyncio.ensure_future(self._read(t, open_stream)) for t in targets]
        for task in self._tasks:
            track(task)

    async def _read(
        self, target: UpstreamClients, open_stream: Callable[[UpstreamClients], AsyncIterator[T]]
    ) -> None:
        error: ConnectError | None = None
        try:
            async for item in open_stream(target):
                await self._space.acquire()
                self._queue.put_nowait((target.instance_id, item))
        except ConnectError as exc:
            error = exc
        except Exception as exc:  # a bug or a decoding problem: this instance only
            log.exception("%s: stream from %s failed unexpectedly", self._rpc, target.instance_id)
            error = ConnectError(Code.INTERNAL, "unexpected error reading the subsystem stream")
            error.__cause__ = exc
        if not self._closing:
            self._queue.put_nowait(_Ended(target.instance_id, error))

    async def next(self, timeout_s: float | None = None) -> tuple[str, T] | None:
        """The next (instance id, event); None when `timeout_s` passed first.

        Raises StopAsyncIteration when every upstream stream has ended.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if not self.live and self._queue.empty():
                raise StopAsyncIteration
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                return None
            if isinstance(item, _Ended):
                self._ended(item)
                continue
            self._space.release()
            self.delivered = True
            return item

    def _ended(self, ended: _Ended) -> None:
        self.live.discard(ended.instance_id)
        if ended.error is None:
            log.info("%s: stream from %s ended", self._rpc, ended.instance_id)
            return
        self.failures[ended.instance_id] = ended.error
        log.warning(
            "%s: stream from %s failed: %s (%s)",
            self._rpc,
            ended.instance_id,
            describe_failure(ended.error),
            ended.error.message,
        )

    def error_if_nothing_delivered(self) -> ConnectError | None:
        """After every stream ended: an error only if all failed before any event."""
        if self.delivered or not self.failures:
            return None
        if len(self.failures) < len(self._tasks):
            return None  # some ended cleanly: an empty stream is a fair answer
        return agreed_error(self._rpc, self.failures)

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STREAM_CLOSE_TIMEOUT_S)
            if still:
                log.warning(
                    "%s: %d upstream stream(s) did not stop within %ss",
                    self._rpc,
                    len(still),
                    STREAM_CLOSE_TIMEOUT_S,
                )


class StreamsProxy:
    """The gateway's StreamService."""

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        fan: FanOut,
        calls: PerRunCalls,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._fan = fan
        self._calls = calls
        self._poll_interval_s = poll_interval_s
        # Open WatchRuns streams, each with its caller's scope.
        self._watches: dict[RunWatch, CallerScope] = {}
        registry.add_listener(self)

    # --- registry listener: open WatchRuns streams follow registrations --------------
    def subsystem_registered(self, instance: SubsystemInstance) -> None:
        clients = self._pool.get(instance.id)
        if clients is None:
            return
        registered = [inst.id for inst in self._registry.instances()]
        for watch, scope in self._watches.items():
            if watch.wants(instance.id, registered) and scope.may_read(instance.id):
                watch.attach(instance, clients)

    def subsystem_removed(self, instance: SubsystemInstance) -> None:
        for watch in self._watches:
            watch.detach(instance.id)

    @staticmethod
    def _report_early_failures(failures: Mapping[str, ConnectError], ctx: CallContext) -> None:
        """Put the failures so far into the response headers. Called before every event:
        the headers go out with the first one (or with the error), so failures after
        that can only be logged."""
        for instance_id, exc in failures.items():
            if exc.code != Code.UNIMPLEMENTED:
                ctx.add_partial_failure(instance_id, describe_failure(exc))

    async def watch_runs(
        self, request: stream.WatchRunsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunEvent]:
        """Every watched subsystem's run events until the caller leaves (see run_watch.py)."""
        watch = RunWatch(request, stream_timeout_ms(ctx), self._poll_interval_s, self._pool.track)
        instances = self._registry.instances()
        registered = [inst.id for inst in instances]
        wanted = [
            inst.id
            for inst in instances
            if watch.wants(inst.id, registered) and ctx.scope.may_read(inst.id)
        ]
        self._fan.note_stale(ctx, wanted)
        self._watches[watch] = ctx.scope
        try:
            for instance in instances:
                clients = self._pool.connected_clients(instance.id)
                if clients is not None and instance.id in wanted:
                    watch.attach(instance, clients)
            while (found := await watch.next()) is not None:
                instance_id, event = found
                if event.HasField("run"):
                    self._calls.stamp(event.run, instance_id)
                    self._calls.claim(instance_id, (event.run.id,))
                self._report_early_failures(watch.failures, ctx)
                yield event
            self._report_early_failures(watch.failures, ctx)
            raise agreed_error("WatchRuns", watch.failures)
        finally:
            self._watches.pop(watch, None)
            await watch.aclose()

    async def watch_run(
        self, request: stream.WatchRunRequest, ctx: CallContext
    ) -> AsyncIterator[stream.RunDetailEvent]:
        clients = self._calls.owner_now(request.run_id)
        if clients is None:
            clients = (await self._calls.locate("WatchRun", request.run_id, ctx)).clients
        owner = clients.instance_id
        self._calls.authorize("WatchRun", owner, request.run_id, ctx, acts=False)
        timeout_ms = stream_timeout_ms(ctx)

        def open_stream(c: UpstreamClients) -> AsyncIterator[stream.RunDetailEvent]:
            return c.stream.watch_run(request, timeout_ms=timeout_ms)

        fan_in = StreamFanIn("WatchRun", [clients], open_stream, self._pool.track)
        try:
            while True:
                try:
                    found = await fan_in.next()
                except StopAsyncIteration:
                    break
                if found is not None:
                    yield found[1]
            failure = fan_in.failures.get(owner)
            if failure is not None and failure.code != Code.CANCELED:
                raise routed_error(owner, failure)
        finally:
            await fan_in.aclose()

    async def watch_stats(
        self, request: stream.WatchStatsRequest, ctx: CallContext
    ) -> AsyncIterator[stream.StatsSnapshot]:
        """A merged snapshot whenever every instance has sent a new one, or each interval.

        Each instance's latest snapshot counts until its stream ends; then it drops out.
        """
        if request.interval_seconds < 0:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"WatchStats: interval_seconds must be at least 1 (0 means the default "
                f"{DEFAULT_STATS_INTERVAL_S}); got {request.interval_seconds}",
            )
        interval = request.interval_seconds or DEFAULT_STATS_INTERVAL_S
        targets = self._fan.targets("WatchStats", ctx)
        timeout_ms = stream_timeout_ms(ctx)

        def open_stream(c: UpstreamClients) -> AsyncIterator[stream.StatsSnapshot]:
            return c.stream.watch_stats(request, timeout_ms=timeout_ms)

        fan_in = StreamFanIn("WatchStats", targets, open_stream, self._pool.track)
        latest: dict[str, stream.StatsSnapshot] = {}
        fresh: set[str] = set()
        next_tick = time.monotonic() + interval
        try:
            while True:
                try:
                    found = await fan_in.next(max(0.0, next_tick - time.monotonic()))
                except StopAsyncIteration:
                    break
                if found is not None:
                    latest[found[0]] = found[1]
                    fresh.add(found[0])
                for gone in set(latest) - fan_in.live:
                    del latest[gone]
                    fresh.discard(gone)
                round_complete = bool(latest) and fan_in.live <= fresh
                if round_complete or (found is None and latest):
                    self._report_early_failures(fan_in.failures, ctx)
                    yield live.merge_stats(latest.values(), datetime.now(UTC))
                    fresh.clear()
                    next_tick = time.monotonic() + interval
                elif found is None:
                    next_tick = time.monotonic() + interval
            self._report_early_failures(fan_in.failures, ctx)
            error = fan_in.error_if_nothing_delivered()
            if error is not None:
                raise error
        finally:
            await fan_in.aclose()
