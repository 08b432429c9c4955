"""A registry shared by several gateway replicas through Redis (GATEWAY_REDIS_URL).

Design
------
The `Registry` protocol is synchronous: register, health and the proxy call it on
the event loop and expect an answer at once. So each replica keeps a complete local
*view* (an InMemoryRegistry, which also carries the listeners: the upstream pool,
the router, the Register service) and a background *sync task* moves state between
the view and Redis:

- **Own entries** are the subsystems whose Register stream this replica holds. The
  view is authoritative for them; every change (registration, stale, discovery,
  removal) marks the id dirty and the sync task writes its full record. Pongs only
  add the id to a set; once per tick one script call stores the heartbeat time of
  all of them (no round trip per pong).
- **Remote entries** are everyone else's. The sync task subscribes to a change
  channel (each write publishes the id; readers fetch that record) and re-reads
  everything periodically, because pub/sub drops what is published while a replica
  is disconnected. Remote records are applied to the view, so the proxy sees and
  calls every subsystem's endpoint directly, whichever replica holds its stream.

Record `<prefix>sub:<id>` (a hash): holder replica id, generation, registered_at,
state, last heartbeat, stale_since and the RegisterRequest (api key removed,
discovered workflows and capabilities filled in). Sorted sets `hb` and `stale`
index heartbeat and stale times; set `ids` lists every id.

Ordering. Each claim of an id takes a fleet-wide generation from `INCR <prefix>epoch`
inside a Lua script that compares and sets atomically: a first claim wins unless the
stored registration is newer (registered_at, estimated in Redis server time), and
every later write of the holder carries its generation and does nothing once another
replica claimed the id. So a reconnect that lands on replica B replaces A's holding,
and A's old stream ending afterwards changes nothing (its stale write fails the
compare). The replaced holder is told over its command channel
(`<prefix>cmd:<replica>`), and closes the old stream with a DisconnectCommand.
Local epochs of the view stay per replica; generations only live in Redis.

Time. Heartbeat, stale and registration times are Redis server time (`TIME` inside
the scripts), so replicas' clocks need not agree. Every replica runs the sweep
script each tick: connected records whose stored heartbeat is older than
`stale_after` turn stale, and stale ones older than the grace period are deleted.
The script is atomic, so each change happens exactly once however many replicas
sweep. Key expiry is not used for any of this. Self-preservation (health.py) applies
across the fleet: a replica whose monitor suspends removals (remove_after=inf) holds a
short lease key, renewed every tick, and no replica's sweep removes while it exists.

Redis down. Nothing blocks: the view keeps serving, registrations are accepted
locally (own entries stay dirty), `status()` reports the outage for /readyz and the
log says so once. On reconnect the replica first rewrites all its own entries (the
compare-and-set keeps a newer holder), then re-reads everything. For one
`stale_after` after connecting it neither sweeps nor drops remote entries missing
from Redis, giving every replica time to rewrite its own (after a Redis restart
with no persistence the store starts empty).

Known costs: the periodic re-read fetches every record (fine for hundreds of
subsystems; a per-record revision would make it incremental); keys are built inside
the scripts, so this needs a single Redis (or one hash slot), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.base import (
    Clock,
    Expiry,
    RegistryListener,
    SubsystemInstance,
    SystemClock,
)
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.urls import redact_url

__all__ = ["DEFAULT_PREFIX", "DisconnectHandler", "RedisRegistry"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "flowwatch:gateway:"
REASON_REPLACED_ELSEWHERE = "replaced by a newer registration of the same subsystem id"
CONNECT_TIMEOUT_S = 2.0
RECONNECT_MAX_S = 5.0
# Longest pause between two passes of the sync loop (and between heartbeat writes).
MAX_TICK_S = 1.0
MAX_RESYNC_S = 5.0
FINAL_FLUSH_S = 1.5
NEVER_CONNECTED = "not connected yet"

# subsystem id, local epoch, reason: close that registration's stream on this replica.
DisconnectHandler = Callable[[str, int, str], None]

# --- Lua: each script is atomic, which is what makes the compare-and-set hold ---------

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: prefix, id, me, gen (0 = first claim), registered_at, state, req, reason
# Returns the generation now held, or 0 when another registration is newer.
_SAVE = (
    _NOW
    + """
local p, id, me = ARGV[1], ARGV[2], ARGV[3]
local gen, registered_at = tonumber(ARGV[4]), tonumber(ARGV[5])
local state, req, reason = ARGV[6], ARGV[7], ARGV[8]
local key = p .. 'sub:' .. id
local cur = redis.call('HMGET', key, 'holder', 'gen', 'registered_at', 'state', 'stale_since')
local keep = false
if cur[1] then
  if cur[1] == me and tonumber(cur[2]) == gen then
    keep = true
  elseif gen ~= 0 or tonumber(cur[3]) > registered_at then
    return 0
  end
end
local new_gen = gen
if not keep then
  new_gen = redis.call('INCR', p .. 'epoch')
end
redis.call('HSET', key, 'holder', me, 'gen', new_gen, 'registered_at', registered_at,
  'state', state, 'req', req)
if state == 'connected' then
  redis.call('HSET', key, 'hb', now)
  redis.call('HDEL', key, 'stale_since')
  redis.call('ZADD', p .. 'hb', now, id)
  redis.call('ZREM', p .. 'stale', id)
else
  local since = now
  if keep and cur[4] == 'stale' and cur[5] then since = tonumber(cur[5]) end
  if not keep then redis.call('HSET', key, 'hb', now) end
  redis.call('HSET', key, 'stale_since', since)
  redis.call('ZREM', p .. 'hb', id)
  redis.call('ZADD', p .. 'stale', since, id)
end
redis.call('SADD', p .. 'ids', id)
redis.call('PUBLISH', p .. 'events', id)
if cur[1] and not keep and cur[1] ~= me then
  redis.call('PUBLISH', p .. 'cmd:' .. cur[1],
    'disconnect\\n' .. id .. '\\n' .. cur[2] .. '\\n' .. reason)
end
return new_gen
"""
)

# ARGV: prefix, me, then (id, gen) pairs. Returns the ids this replica no longer holds.
_HEARTBEATS = (
    _NOW
    + """
local p, me = ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local id, gen = ARGV[i], ARGV[i + 1]
  local key = p .. 'sub:' .. id
  local cur = redis.call('HMGET', key, 'holder', 'gen', 'state')
  if cur[1] == me and cur[2] == gen then
    redis.call('HSET', key, 'hb', now)
    redis.call('ZADD', p .. 'hb', now, id)
    if cur[3] == 'stale' then
      redis.call('HSET', key, 'state', 'connected')
      redis.call('HDEL', key, 'stale_since')
      redis.call('ZREM', p .. 'stale', id)
      redis.call('PUBLISH', p .. 'events', id)
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
"""
)

# ARGV: prefix, stale_after_ms, remove_after_ms (-1: none), replica preserving (or '').
# Returns {went stale, removed}. While any replica holds the self-preservation lease
# (`<prefix>preserve`), nobody's sweep removes anything.
_SWEEP = (
    _NOW
    + """
local p = ARGV[1]
local stale_after, remove_after = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', p .. 'preserve', ARGV[4], 'PX', math.max(stale_after * 2, 1000))
end
if remove_after < 0 or redis.call('EXISTS', p .. 'preserve') == 1 then
  remove_after = nil
end
local went = redis.call('ZRANGEBYSCORE', p .. 'hb', '-inf', '(' .. (now - stale_after))
for _, id in ipairs(went) do
  local key = p .. 'sub:' .. id
  redis.call('ZREM', p .. 'hb', id)
  if redis.call('HGET', key, 'state') == 'connected' then
    redis.call('HSET', key, 'state', 'stale', 'stale_since', now)
    redis.call('ZADD', p .. 'stale', now, id)
    redis.call('PUBLISH', p .. 'events', id)
  end
end
local removed = {}
if remove_after then
  removed = redis.call('ZRANGEBYSCORE', p .. 'stale', '-inf', now - remove_after)
end
for _, id in ipairs(removed) do
  redis.call('DEL', p .. 'sub:' .. id)
  redis.call('ZREM', p .. 'stale', id)
  redis.call('ZREM', p .. 'hb', id)
  redis.call('SREM', p .. 'ids', id)
  redis.call('PUBLISH', p .. 'events', id)
end
return {went, removed}
"""
)

# ARGV: prefix, id, holder, gen. Deletes only that holding; returns 1 if it did.
_DELETE = """
local p, id = ARGV[1], ARGV[2]
local key = p .. 'sub:' .. id
local cur = redis.call('HMGET', key, 'holder', 'gen')
if cur[1] ~= ARGV[3] or cur[2] ~= ARGV[4] then return 0 end
redis.call('DEL', key)
redis.call('ZREM', p .. 'hb', id)
redis.call('ZREM', p .. 'stale', id)
redis.call('SREM', p .. 'ids', id)
redis.call('PUBLISH', p .. 'events', id)
return 1
"""


@dataclass
class _Own:
    """A registration whose stream this replica holds."""

    epoch: int  # in the local view
    registered_at_ms: int  # estimated Redis server time
    gen: int = 0  # fleet-wide generation; 0 until Redis has accepted the claim


@dataclass
class _Remote:
    """Another replica's holding, as last applied to the view."""

    holder: str
    gen: int
    epoch: int  # in the local view
    req: bytes


@dataclass
class _Scripts:
    save: AsyncScript
    heartbeats: AsyncScript
    sweep: AsyncScript
    delete: AsyncScript


class RedisRegistry:
    """A `Registry` (base.py) whose state is shared through Redis; see the module doc.

    Use from one event loop. `run()` is the sync task (the app starts it in its
    lifespan); without it the registry behaves like the in-memory one.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float,
        clock: Clock | None = None,
        replica_id: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._url = url
        self._client_override = client
        self._clock: Clock = clock or SystemClock()
        self._view = InMemoryRegistry(self._clock)
        self.replica_id = replica_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._prefix = prefix
        self._tick = min(heartbeat / 2, MAX_TICK_S)
        self._resync = max(self._tick, min(heartbeat, MAX_RESYNC_S))
        self._own: dict[str, _Own] = {}
        self._remote: dict[str, _Remote] = {}
        self._dirty: set[str] = set()
        self._beats: set[str] = set()
        self._deletes: dict[str, tuple[str, int]] = {}
        self._refresh: set[str] = set()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        # Set by expire(): the health monitor's thresholds, reused by the Redis sweep.
        self._thresholds: tuple[float, float] | None = None
        self._offset_ms = 0.0  # Redis server time minus local wall time
        self._up_since: float | None = None
        self._down_since: float | None = time.monotonic()
        self._last_error = NEVER_CONNECTED
        self.disconnect_handler: DisconnectHandler | None = None

    # --- status ----------------------------------------------------------------------
    @property
    def redis_up(self) -> bool:
        return self._up_since is not None

    def status(self) -> str:
        """One line for /readyz: is the shared state reachable, and what that means.

        /readyz answers anyone who reaches the port: the client's exception text
        (addresses, library internals) stays in the log, written once per outage.
        """
        where = redact_url(self._url)
        if self._up_since is not None:
            return f"registry: redis {where} connected (replica {self.replica_id})"
        down_for = time.monotonic() - (self._down_since or time.monotonic())
        return (
            f"registry: redis {where} unreachable for {down_for:.0f}s (why: see the log); "
            "serving the last shared view, registrations kept locally until it returns"
        )

    # --- Registry: listeners and queries go to the view ------------------------------
    def add_listener(self, listener: RegistryListener) -> None:
        self._view.add_listener(listener)

    def get(self, subsystem_id: str) -> SubsystemInstance | None:
        return self._view.get(subsystem_id)

    def instances(self) -> list[SubsystemInstance]:
        return self._view.instances()

    def connected(self) -> list[SubsystemInstance]:
        return self._view.connected()

    def is_current(self, subsystem_id: str, epoch: int) -> bool:
        return self._view.is_current(subsystem_id, epoch)

    def workflow_owners(self, workflow_id: str) -> list[str]:
        return self._view.workflow_owners(workflow_id)

    # --- Registry: changes are made in the view, then queued for Redis ---------------
    def register(self, request: gateway_service_pb2.RegisterRequest) -> SubsystemInstance:
        instance = self._view.register(request)
        self._remote.pop(instance.id, None)
        self._deletes.pop(instance.id, None)
        server_ms = int(time.time() * 1000 + self._offset_ms)
        self._own[instance.id] = _Own(epoch=instance.epoch, registered_at_ms=server_ms)
        self._mark_dirty(instance.id)
        return instance

    def deregister(self, subsystem_id: str, epoch: int | None = None) -> SubsystemInstance | None:
        own, remote = self._own.get(subsystem_id), self._remote.get(subsystem_id)
        instance = self._view.deregister(subsystem_id, epoch)
        if instance is None:
            return None
        self._dirty.discard(subsystem_id)
        if own is not None and own.epoch == instance.epoch:
            del self._own[subsystem_id]
            if own.gen:
                self._deletes[subsystem_id] = (self.replica_id, own.gen)
        elif remote is not None and remote.epoch == instance.epoch:
            del self._remote[subsystem_id]
            self._deletes[subsystem_id] = (remote.holder, remote.gen)
        self._wake.set()
        return instance

    def mark_stale(self, subsystem_id: str, epoch: int) -> bool:
        if not self._view.mark_stale(subsystem_id, epoch):
            return False
        if self._owns(subsystem_id, epoch):
            self._mark_dirty(subsystem_id)
        return True

    def record_heartbeat(self, subsystem_id: str, epoch: int) -> bool:
        if not self._view.record_heartbeat(subsystem_id, epoch):
            return False
        if self._owns(subsystem_id, epoch):
            self._beats.add(subsystem_id)  # written with the others at the next tick
        return True

    def update_discovery(
        self,
        subsystem_id: str,
        epoch: int,
        workflows: Iterable[types_pb2.WorkflowDefinition] | None = None,
        capabilities: types_pb2.Capabilities | None = None,
    ) -> bool:
        if not self._view.update_discovery(subsystem_id, epoch, workflows, capabilities):
            return False
        # A remote entry's discovery stays local: its holder publishes its own.
        if self._owns(subsystem_id, epoch):
            self._mark_dirty(subsystem_id)
        return True

    def expire(self, *, stale_after: float, remove_after: float) -> Expiry:
        """Time out own entries by local pong times; Redis's sweep handles the rest."""
        self._thresholds = (stale_after, remove_after)
        mono = self._clock.monotonic()
        result = Expiry()
        for subsystem_id, own in list(self._own.items()):
            instance = self._view.get(subsystem_id)
            if instance is None or instance.epoch != own.epoch:
                continue
            if instance.connected:
                if mono - instance.last_heartbeat_monotonic > stale_after:
                    self.mark_stale(subsystem_id, own.epoch)
                    result.went_stale.append(instance)
            elif (
                instance.stale_since_monotonic is not None
                and mono - instance.stale_since_monotonic >= remove_after
            ):
                removed = self.deregister(subsystem_id, own.epoch)
                if removed is not None:
                    result.removed.append(removed)
        return result

    # --- the sync task ---------------------------------------------------------------
    async def run(self) -> None:
        """Keep Redis and the view in step until aclose(); survive Redis outages."""
        delay = 0.1
        while not self._closing.is_set():
            try:
                await self._session()
            except (RedisError, OSError) as exc:
                if self._up_since is not None:
                    delay = 0.1  # it was working: try again at once, then back off
                self._went_down(exc)
            except Exception as exc:
                # A bug must not stop sharing for good: report it, start a new session.
                log.exception("registry sync failed; starting over")
                self._went_down(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def aclose(self) -> None:
        """Stop the sync task's loop; the last pass flushes what is pending (bounded)."""
        self._closing.set()
        self._wake.set()

    async def _session(self) -> None:
        client = self._client_override or aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=CONNECT_TIMEOUT_S,
        )
        pubsub = client.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            await client.ping()
            scripts = _Scripts(
                save=client.register_script(_SAVE),
                heartbeats=client.register_script(_HEARTBEATS),
                sweep=client.register_script(_SWEEP),
                delete=client.register_script(_DELETE),
            )
            await pubsub.subscribe(self._key("events"), self._key(f"cmd:{self.replica_id}"))
            reader = asyncio.create_task(self._read_notifications(client, pubsub))
            reader.add_done_callback(lambda _: self._wake.set())
            # Reconcile: everything this replica holds is rewritten before anything is
            # read, so a store that restarted empty is refilled first.
            self._dirty.update(self._own)
            await self._flush(scripts)
            await self._full_read(client)
            self._came_up()
            next_resync = time.monotonic() + self._resync
            while True:
                await self._flush(scripts)
                if self._closing.is_set():
                    return
                await self._sweep(scripts)
                if time.monotonic() >= next_resync:
                    await self._full_read(client)
                    next_resync = time.monotonic() + self._resync
                if reader.done():
                    reader.result()  # raises what ended it
                    raise RedisError("notification reader stopped")
                if self._closing.is_set():
                    continue  # flush once more, then stop
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._tick)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            if self._client_override is None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _came_up(self) -> None:
        if self._up_since is not None:
            return
        self._up_since = time.monotonic()
        self._down_since = None
        if self._last_error == NEVER_CONNECTED:
            log.info(
                "registry shared through redis %s as replica %s",
                redact_url(self._url),
                self.replica_id,
            )
        else:
            log.warning(
                "redis %s reachable again: this replica's %d subsystem(s) rewritten, "
                "shared view re-read",
                redact_url(self._url),
                len(self._own),
            )

    def _went_down(self, exc: BaseException) -> None:
        # Logged once per outage (and once if the first attempt fails), not per retry.
        loud = self._up_since is not None or self._last_error == NEVER_CONNECTED
        self._last_error = f"{type(exc).__name__}: {exc}"[:200]
        if loud:
            log.warning(
                "redis %s unreachable (%s): serving the last shared view; registrations are "
                "kept locally and written when it returns",
                redact_url(self._url),
                self._last_error,
            )
        else:
            log.debug("redis still unreachable: %s", self._last_error)
        self._up_since = None
        if self._down_since is None:
            self._down_since = time.monotonic()

    # --- writing ---------------------------------------------------------------------
    async def _flush(self, scripts: _Scripts) -> None:
        """Write pending deletions, claims/records and heartbeats."""
        while self._deletes:
            subsystem_id, (holder, gen) = next(iter(self._deletes.items()))
            await scripts.delete(args=[self._prefix, subsystem_id, holder, gen])
            if self._deletes.get(subsystem_id) == (holder, gen):
                del self._deletes[subsystem_id]
        while self._dirty:
            subsystem_id = self._dirty.pop()
            try:
                await self._save(scripts, subsystem_id)
            except BaseException:
                self._dirty.add(subsystem_id)
                raise
        beats, self._beats = self._beats, set()
        args: list[str | int] = [self._prefix, self.replica_id]
        for subsystem_id in sorted(beats):
            own = self._own.get(subsystem_id)
            if own is not None and own.gen:
                args += [subsystem_id, own.gen]
        if len(args) > 2:
            try:
                lost = await scripts.heartbeats(args=args)
            except BaseException:
                self._beats |= beats
                raise
            # Another replica holds these now: fetch and apply (which ends our holding).
            self._refresh.update(_text(item) for item in lost)

    async def _save(self, scripts: _Scripts, subsystem_id: str) -> None:
        own = self._own.get(subsystem_id)
        instance = self._view.get(subsystem_id)
        if own is None or instance is None or instance.epoch != own.epoch:
            return
        gen = int(
            await scripts.save(
                args=[
                    self._prefix,
                    subsystem_id,
                    self.replica_id,
                    own.gen,
                    own.registered_at_ms,
                    instance.state.value,
                    _record_request(instance).SerializeToString(),
                    REASON_REPLACED_ELSEWHERE,
                ]
            )
        )
        if self._own.get(subsystem_id) is not own:
            return  # re-registered meanwhile; that one is dirty itself
        if gen:
            own.gen = gen
            return
        log.info(
            "subsystem %s is held by a newer registration on another replica: "
            "ending this replica's registration %s",
            subsystem_id,
            instance.registration_id,
        )
        self._lose(subsystem_id, own)
        self._refresh.add(subsystem_id)

    async def _sweep(self, scripts: _Scripts) -> None:
        if self._thresholds is None or self._up_since is None:
            return
        stale_after, remove_after = self._thresholds
        # Give every replica one stale_after to rewrite its entries after an outage.
        if time.monotonic() - self._up_since < stale_after:
            return
        # The health monitor passes remove_after=inf while self-preservation is on;
        # the lease this sets makes every replica's sweep keep its hands off too.
        preserving = math.isinf(remove_after)
        went, removed = await scripts.sweep(
            args=[
                self._prefix,
                int(stale_after * 1000),
                -1 if preserving else int(remove_after * 1000),
                self.replica_id if preserving else "",
            ]
        )
        for item in went:
            log.info("subsystem stale: id=%s reason=no heartbeat stored", _text(item))
        for item in removed:
            log.info("subsystem removed: id=%s reason=stale past the grace period", _text(item))

    # --- reading ---------------------------------------------------------------------
    async def _read_notifications(self, client: aioredis.Redis, pubsub: Any) -> None:
        """Apply changed records as their ids are published; run commands sent to us."""
        commands = self._key(f"cmd:{self.replica_id}").encode()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._tick)
            while message is not None:
                if message["channel"] == commands:
                    self._command(_text(message["data"]))
                else:
                    self._refresh.add(_text(message["data"]))
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            if self._refresh:
                ids, self._refresh = sorted(self._refresh), set()
                async with client.pipeline(transaction=False) as pipe:
                    for subsystem_id in ids:
                        pipe.hgetall(self._key(f"sub:{subsystem_id}"))
                    records = await pipe.execute()
                for subsystem_id, record in zip(ids, records, strict=True):
                    self._apply(subsystem_id, record or None)

    async def _full_read(self, client: aioredis.Redis) -> None:
        before = time.time()
        server = await client.time()
        after = time.time()
        self._offset_ms = (server[0] + server[1] / 1e6 - (before + after) / 2) * 1000
        ids = sorted(_text(item) for item in await client.smembers(self._key("ids")))
        async with client.pipeline(transaction=False) as pipe:
            for subsystem_id in ids:
                pipe.hgetall(self._key(f"sub:{subsystem_id}"))
            records = await pipe.execute()
        for subsystem_id, record in zip(ids, records, strict=True):
            self._apply(subsystem_id, record or None)
        settled = (
            self._up_since is not None
            and self._thresholds is not None
            and time.monotonic() - self._up_since >= self._thresholds[0]
        )
        if settled:
            present = set(ids)
            for subsystem_id in [key for key in self._remote if key not in present]:
                self._apply(subsystem_id, None)
            for subsystem_id in [key for key, own in self._own.items() if key not in present]:
                self._apply(subsystem_id, None)

    def _apply(self, subsystem_id: str, record: dict[bytes, bytes] | None) -> None:
        """Make the view show what Redis holds for this id (own entries excepted)."""
        own = self._own.get(subsystem_id)
        if own is not None:
            if own.gen == 0 or subsystem_id in self._dirty:
                return  # our pending write decides
            if record is not None and _text(record.get(b"holder", b"")) == self.replica_id:
                return  # ours: the view is authoritative
            if record is None:
                self.deregister(subsystem_id, own.epoch)  # removed elsewhere (grace period)
                return
            self._lose(subsystem_id, own)
        if record is None:
            remote = self._remote.pop(subsystem_id, None)
            if remote is not None and subsystem_id not in self._deletes:
                self._view.deregister(subsystem_id, remote.epoch)
            return
        if subsystem_id in self._deletes:
            return
        holder = _text(record[b"holder"])
        gen = int(record[b"gen"])
        req = record[b"req"]
        remote = self._remote.get(subsystem_id)
        instance = self._view.get(subsystem_id)
        if (
            remote is None
            or instance is None
            or instance.epoch != remote.epoch
            or (remote.holder, remote.gen) != (holder, gen)
        ):
            instance = self._view.register(gateway_service_pb2.RegisterRequest.FromString(req))
            remote = _Remote(holder=holder, gen=gen, epoch=instance.epoch, req=req)
            self._remote[subsystem_id] = remote
        elif remote.req != req:
            request = gateway_service_pb2.RegisterRequest.FromString(req)
            self._view.update_discovery(
                subsystem_id,
                instance.epoch,
                workflows=list(request.workflows) or None,
                capabilities=request.capabilities if request.HasField("capabilities") else None,
            )
            remote.req = req
        stale = record.get(b"state") == b"stale"
        if stale and instance.connected:
            self._view.mark_stale(subsystem_id, instance.epoch)
        elif not stale and not instance.connected:
            self._view.record_heartbeat(subsystem_id, instance.epoch)
        instance.registered_at = _server_time(record.get(b"registered_at"), instance.registered_at)
        instance.last_heartbeat = _server_time(record.get(b"hb"), instance.last_heartbeat)
        if stale and instance.stale_since is not None:
            instance.stale_since = _server_time(record.get(b"stale_since"), instance.stale_since)

    def _command(self, text: str) -> None:
        """A command another replica sent about a subsystem this replica holds."""
        kind, _, rest = text.partition("\n")
        if kind != "disconnect":
            log.warning("ignoring unknown registry command %r", kind[:40])
            return
        subsystem_id, _, rest = rest.partition("\n")
        gen_text, _, reason = rest.partition("\n")
        own = self._own.get(subsystem_id)
        if own is not None and str(own.gen) == gen_text:
            self._lose(subsystem_id, own, reason)
        self._refresh.add(subsystem_id)

    def _lose(self, subsystem_id: str, own: _Own, reason: str = REASON_REPLACED_ELSEWHERE) -> None:
        """Another replica holds this id now: stop treating it as ours, close our stream."""
        if self._own.get(subsystem_id) is own:
            del self._own[subsystem_id]
        self._beats.discard(subsystem_id)
        if self.disconnect_handler is not None:
            try:
                self.disconnect_handler(subsystem_id, own.epoch, reason)
            except Exception:
                log.exception("closing the replaced stream of %s failed", subsystem_id)

    # --- internals -------------------------------------------------------------------
    def _owns(self, subsystem_id: str, epoch: int) -> bool:
        own = self._own.get(subsystem_id)
        return own is not None and own.epoch == epoch

    def _mark_dirty(self, subsystem_id: str) -> None:
        self._dirty.add(subsystem_id)
        self._wake.set()

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"


def _record_request(instance: SubsystemInstance) -> gateway_service_pb2.RegisterRequest:
    """The registration as stored: what it announced plus what discovery filled in."""
    request = gateway_service_pb2.RegisterRequest()
    request.CopyFrom(instance.request)
    request.ClearField("api_key")
    del request.workflows[:]
    request.workflows.extend(instance.workflows)
    if instance.capabilities is not None:
        request.capabilities.CopyFrom(instance.capabilities)
    return request


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _server_time(value: bytes | None, default: datetime) -> datetime:
    if not value:
        return default
    return datetime.fromtimestamp(int(value) / 1000, UTC)
