"""The Redis-backed registry against a real redis-server: several replicas in one loop.

Each test uses its own key prefix on one module-wide server, so they cannot see
each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from flowwatch_gateway.gen.flowwatch.v1 import gateway_service_pb2, types_pb2
from flowwatch_gateway.registry.redis import REASON_REPLACED_ELSEWHERE, RedisRegistry
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

HEARTBEAT = 0.2
STALE_AFTER = 2 * HEARTBEAT
GRACE = 0.6


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    yield from redis_server()


def request(subsystem_id: str, endpoint: str = "") -> gateway_service_pb2.RegisterRequest:
    return gateway_service_pb2.RegisterRequest(
        subsystem_id=subsystem_id,
        subsystem_name=f"{subsystem_id} name",
        flowwatch_endpoint=endpoint or f"http://{subsystem_id}:8080",
        api_key="never-stored",
        workflows=[types_pb2.WorkflowDefinition(id=f"{subsystem_id}-wf", name="wf")],
    )


async def eventually(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


class Replica:
    """A RedisRegistry with its sync task, and the disconnects it was asked to make."""

    def __init__(self, url: str, prefix: str, name: str) -> None:
        self.registry = RedisRegistry(url, heartbeat=HEARTBEAT, replica_id=name, prefix=prefix)
        self.disconnects: list[tuple[str, int, str]] = []
        self.registry.disconnect_handler = lambda *args: self.disconnects.append(args)
        self.task = asyncio.create_task(self.registry.run())

    def sweep(self) -> None:
        self.registry.expire(stale_after=STALE_AFTER, remove_after=GRACE)

    def state(self, subsystem_id: str) -> str | None:
        instance = self.registry.get(subsystem_id)
        return None if instance is None else instance.state.value

    def kill(self) -> None:
        """Stop at once, like SIGKILL: nothing more is written."""
        self.task.cancel()

    async def close(self) -> None:
        await self.registry.aclose()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.task, 3.0)


@contextlib.asynccontextmanager
async def replicas(url: str, *names: str) -> AsyncIterator[list[Replica]]:
    prefix = f"test-{secrets.token_hex(4)}:"
    started = [Replica(url, prefix, name) for name in names]
    try:
        await eventually(
            lambda: all(r.registry.redis_up for r in started), "every replica connected"
        )
        yield started
    finally:
        for replica in started:
            await replica.close()


async def test_a_registration_on_one_replica_is_visible_on_the_others(
    server: RedisServer,
) -> None:
    async with replicas(server.url, "a", "b") as (a, b):
        own = a.registry.register(request("orders"))
        await eventually(lambda: b.state("orders") == "connected", "orders on b")
        seen = b.registry.get("orders")
        assert seen is not None
        assert seen.endpoint == "http://orders:8080"
        assert [w.id for w in seen.workflows] == ["orders-wf"]
        assert seen.workflows[0].subsystem_id == "orders"
        assert not seen.request.api_key
        assert b.registry.workflow_owners("orders-wf") == ["orders"]

        # Discovery on the holder reaches the others.
        caps = types_pb2.Capabilities(retry_run=True)
        assert a.registry.update_discovery("orders", own.epoch, capabilities=caps)
        await eventually(
            lambda: (b.registry.get("orders") or own).capabilities is not None, "caps on b"
        )

        # Stale and back, as the holder sees its stream.
        assert a.registry.mark_stale("orders", own.epoch)
        await eventually(lambda: b.state("orders") == "stale", "orders stale on b")
        assert a.registry.record_heartbeat("orders", own.epoch)
        await eventually(lambda: b.state("orders") == "connected", "orders back on b")

        assert a.registry.deregister("orders", own.epoch) is not None
        await eventually(lambda: b.state("orders") is None, "orders gone from b")


async def test_a_reconnect_on_another_replica_replaces_the_old_holder_for_good(
    server: RedisServer,
) -> None:
    async with replicas(server.url, "a", "b", "c") as (a, b, c):
        old = a.registry.register(request("orders"))
        await eventually(lambda: c.state("orders") == "connected", "orders on c")
        await asyncio.sleep(0.01)  # a later registration, as a reconnect is

        new = b.registry.register(request("orders"))
        # The old holder is told to close its stream...
        await eventually(lambda: len(a.disconnects) == 1, "a told to disconnect")
        assert a.disconnects == [("orders", old.epoch, REASON_REPLACED_ELSEWHERE)]
        # ...and its stream ending afterwards changes nothing anywhere.
        a.registry.mark_stale("orders", old.epoch)
        a.registry.deregister("orders", old.epoch)
        await asyncio.sleep(5 * HEARTBEAT)
        for replica in (a, b, c):
            assert replica.state("orders") == "connected", replica.registry.replica_id
        assert b.registry.is_current("orders", new.epoch)
        assert not b.disconnects and not c.disconnects


async def test_the_older_of_two_racing_registrations_loses(server: RedisServer) -> None:
    async with replicas(server.url, "a", "b") as (a, b):
        newer_first = b.registry.register(request("orders", "http://orders-new:8080"))
        await eventually(lambda: a.state("orders") == "connected", "b's orders on a")
        # A registration made earlier but written later (a replica that was cut off from
        # Redis) must not win: registered_at decides, not arrival.
        stale_claim = a.registry.register(request("orders", "http://orders-old:8080"))
        a.registry._own["orders"].registered_at_ms -= 60_000
        await eventually(lambda: len(a.disconnects) == 1, "a's late claim refused")
        assert a.disconnects[0][1] == stale_claim.epoch
        await eventually(
            lambda: (a.registry.get("orders") or stale_claim).endpoint == "http://orders-new:8080",
            "a shows b's registration",
        )
        assert b.registry.is_current("orders", newer_first.epoch)


async def test_a_dead_replicas_subsystems_go_stale_then_are_removed_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowwatch_gateway.registry.redis")
    async with replicas(server.url, "a", "b", "c") as (a, b, c):
        a.registry.register(request("orders"))
        await eventually(lambda: b.state("orders") == "connected", "orders on b")
        a.kill()
        went_stale = False

        def swept() -> bool:
            nonlocal went_stale
            for replica in (b, c):
                replica.sweep()
            went_stale |= b.state("orders") == "stale"
            return b.state("orders") is None and c.state("orders") is None

        await eventually(swept, "orders removed everywhere")
        assert went_stale
        removed_lines = [
            r for r in caplog.records if r.getMessage().startswith("subsystem removed: id=orders")
        ]
        assert len(removed_lines) == 1, [r.getMessage() for r in removed_lines]


async def test_redis_outage_keeps_serving_and_reconciles_after_a_restart(
    server: RedisServer,
) -> None:
    async with replicas(server.url, "a", "b") as (a, b):
        before = a.registry.register(request("before"))
        await eventually(lambda: b.state("before") == "connected", "before on b")

        server.stop()
        await eventually(lambda: not a.registry.redis_up, "a notices the outage")
        assert "unreachable" in a.registry.status()
        # Serving from the last view, and registering locally.
        assert b.state("before") == "connected"
        during = a.registry.register(request("during"))
        assert a.state("during") == "connected"
        assert a.registry.record_heartbeat("before", before.epoch)

        server.start_ready()  # empty: no persistence
        await eventually(lambda: a.registry.redis_up and b.registry.redis_up, "reconnected")
        await eventually(lambda: b.state("during") == "connected", "during reaches b")
        assert b.state("before") == "connected"
        assert a.registry.is_current("during", during.epoch)
        assert "connected" in a.registry.status()


async def test_self_preservation_on_one_replica_stops_removals_fleet_wide(
    server: RedisServer,
) -> None:
    async with replicas(server.url, "a", "b", "c") as (a, b, c):
        c.registry.register(request("orders"))
        await eventually(lambda: b.state("orders") == "connected", "orders on b")
        c.kill()

        def sweep_with_a_preserving() -> None:
            a.registry.expire(stale_after=STALE_AFTER, remove_after=math.inf)
            b.sweep()

        def stale_on_b() -> bool:
            sweep_with_a_preserving()
            return b.state("orders") == "stale"

        await eventually(stale_on_b, "orders stale")
        deadline = time.monotonic() + 4 * GRACE
        while time.monotonic() < deadline:  # b alone would have removed it by now
            sweep_with_a_preserving()
            await asyncio.sleep(0.05)
        assert b.state("orders") == "stale"

        def removed_once_a_lets_go() -> bool:
            a.sweep()
            b.sweep()
            return b.state("orders") is None

        await eventually(removed_once_a_lets_go, "orders removed after the lease ran out")
