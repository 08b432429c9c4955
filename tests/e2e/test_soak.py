"""Soak: many subsystems hold Register streams while the UI polls the gateway.

Slow (about 15 s), so excluded from the default run; CI runs it (`-m ""`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from tests.support.harness import RegisterStream, register_client, register_request, start_gateway

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SUBSYSTEMS = 60
HEARTBEAT_S = 1.0
HOLD_S = 10.0


async def poll_states(url: str, until: float) -> list[dict[str, str]]:
    """ListSubsystems as the UI would call it, every half second; one state map per poll."""
    seen = []
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            response = await client.post(
                f"{url}/flowwatch.v1.WorkflowService/ListSubsystems",
                json={},
                headers={"Connect-Protocol-Version": "1"},
            )
            assert response.status_code == 200, response.text
            seen.append(
                {
                    s["subsystem"]["id"]: s["subsystem"]["metadata"]["gateway.state"]
                    for s in response.json().get("subsystems", [])
                }
            )
            await asyncio.sleep(0.5)
    return seen


async def test_many_register_streams_stay_connected_under_polling() -> None:
    with start_gateway("--heartbeat", "1s", "--grace-period", "5s") as gateway:
        async with contextlib.AsyncExitStack() as stack:
            streams: list[RegisterStream] = []
            for n in range(SUBSYSTEMS):
                stream = await stack.enter_async_context(
                    register_client(gateway.url, register_request(f"soak-{n:03d}"))
                )
                streams.append(stream)
            await asyncio.gather(*(s.wait_for("registered", within=20) for s in streams))
            snapshots = await poll_states(gateway.url, time.monotonic() + HOLD_S)

            pings = [s.kinds().count("ping") for s in streams]
            expected = HOLD_S / HEARTBEAT_S
            print(f"pings per stream over {HOLD_S}s: min {min(pings)} max {max(pings)}")
            assert min(pings) >= expected * 0.6
            assert all(not s.done.is_set() for s in streams)
            # Once all had registered, no poll ever saw one of them stale.
            full = [snap for snap in snapshots if len(snap) == SUBSYSTEMS]
            assert full, "no poll saw every subsystem"
            for snapshot in full:
                assert set(snapshot.values()) == {"connected"}, snapshot
        assert gateway.stop() == 0
