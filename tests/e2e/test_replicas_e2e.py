"""Three gateway replicas sharing their registry on Redis, behind a real HTTP/2 load
balancer (Envoy, round robin, health checks on /readyz), with demo subsystems that
register through the balancer and a UI-like client that calls through it.

Slow (a dozen processes): excluded from a plain `pytest`, run by `dev.py test`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from flowwatch_gateway.processes import free_port
from tests.support.balancer import LoadBalancer
from tests.support.harness import (
    TEST_API_KEY,
    GatewayProcess,
    SubsystemProcess,
    start_gateway,
    start_subsystem,
    subsystem_states,
)
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.slow

SUBSYSTEMS = ("orders", "payments", "shipping")
CURSOR_KEY = "one-key-for-every-replica"
HEARTBEAT = "500ms"


@dataclass
class Fleet:
    redis: RedisServer
    gateways: list[GatewayProcess]
    balancer: LoadBalancer
    subsystems: dict[str, SubsystemProcess]

    def alive(self) -> list[GatewayProcess]:
        return [gateway for gateway in self.gateways if gateway.running]

    def holders(self) -> dict[str, GatewayProcess]:
        """subsystem id -> the replica whose log shows its latest accepted registration."""
        latest: dict[str, tuple[int, GatewayProcess]] = {}
        for gateway in self.gateways:
            for number, line in enumerate(gateway.logs().splitlines()):
                for subsystem_id in SUBSYSTEMS:
                    if f"subsystem registered: id={subsystem_id} " in line:
                        stamp = _log_time(line, number)
                        if subsystem_id not in latest or stamp > latest[subsystem_id][0]:
                            latest[subsystem_id] = (stamp, gateway)
        return {subsystem_id: gateway for subsystem_id, (_, gateway) in latest.items()}


def _log_time(line: str, fallback: int) -> int:
    """Registrations are ordered by their log time (HH:MM:SS,mmm prefix) when it has one."""
    digits = "".join(ch for ch in line[:30] if ch.isdigit())
    return int(digits) if digits else fallback


def until(check: Callable[[], bool], what: str, within: float = 30.0) -> float:
    started = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - started < within:
        try:
            if check():
                return time.monotonic() - started
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what} (last error: {last!r})")


def readyz_says(url: str, word: str) -> bool:
    return word in httpx.get(f"{url}/readyz", timeout=2.0).text


def all_connected(url: str) -> bool:
    return subsystem_states(url) == dict.fromkeys(SUBSYSTEMS, "connected")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    redis_gen = redis_server()
    redis = next(redis_gen)
    ports = [free_port() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: next(redis_gen, None))
        gateways = [
            stack.enter_context(
                start_gateway(
                    "--redis-url",
                    redis.url,
                    "--cursor-key",
                    CURSOR_KEY,
                    "--heartbeat",
                    HEARTBEAT,
                    "--grace-period",
                    "5s",
                    "--api-key",
                    TEST_API_KEY,
                    port=port,
                    wait=False,
                )
            )
            for port in ports
        ]
        for gateway in gateways:
            gateway.wait_ready()
        balancer = stack.enter_context(
            LoadBalancer(ports, health_interval=0.5, workdir=tmp_path_factory.mktemp("lb"))
        )
        balancer.start()
        balancer.wait_healthy()
        subsystems = {
            subsystem_id: stack.enter_context(
                start_subsystem(
                    balancer.url,
                    subsystem_id,
                    "--seed",
                    str(seed),
                    "--min-backoff",
                    "100ms",
                    "--max-backoff",
                    "1s",
                    api_key=TEST_API_KEY,
                    wait=False,
                )
            )
            for seed, subsystem_id in enumerate(SUBSYSTEMS, start=1)
        }
        for subsystem in subsystems.values():
            subsystem.wait_ready()
        for gateway in gateways:
            until(partial(all_connected, gateway.url), f"every subsystem on {gateway.url}")
        yield Fleet(redis, gateways, balancer, subsystems)


def post(url: str, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1"},
        timeout=10.0,
    )
    assert response.status_code == 200, f"{rpc}: {response.status_code} {response.text}"
    assert "flowwatch-partial-failure" not in response.headers
    result: dict[str, Any] = response.json()
    return result


def test_every_call_through_the_balancer_sees_every_subsystem(fleet: Fleet) -> None:
    # The streams are spread over the replicas (round robin)...
    assert len(set(map(id, fleet.holders().values()))) >= 2, fleet.holders()
    # ...yet every call, whichever replica answers it, lists all of them.
    for _ in range(3 * len(fleet.gateways)):
        assert all_connected(fleet.balancer.url)


def test_list_runs_pages_exactly_once_across_replicas(fleet: Fleet) -> None:
    expected: set[str] = set()
    for subsystem in fleet.subsystems.values():
        cursor = ""
        while True:
            page = post(
                subsystem.url,
                "RunService/ListRuns",
                {"pagination": {"limit": 200, "cursor": cursor}},
            )
            expected |= {run["id"] for run in page.get("runs", [])}
            cursor = page.get("pagination", {}).get("nextCursor", "")
            if not cursor:
                break
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:  # each page is likely answered by another replica than the one before
        page = post(
            fleet.balancer.url,
            "RunService/ListRuns",
            {"pagination": {"limit": 40, "cursor": cursor}},
        )
        seen += [run["id"] for run in page.get("runs", [])]
        pages += 1
        cursor = page.get("pagination", {}).get("nextCursor", "")
        if not cursor:
            break
    assert pages >= 3
    assert len(seen) == len(set(seen)), "a run was listed twice"
    assert expected <= set(seen), f"{len(expected - set(seen))} run(s) never listed"


def test_redis_outage_keeps_every_replica_ready_and_serving(fleet: Fleet) -> None:
    fleet.redis.stop()
    try:
        for gateway in fleet.alive():
            until(
                partial(readyz_says, gateway.url, "unreachable"),
                f"{gateway.url} reports the outage",
            )
            response = httpx.get(f"{gateway.url}/readyz")
            assert response.status_code == 200, response.text
        for _ in range(len(fleet.gateways)):
            assert all_connected(fleet.balancer.url)
    finally:
        fleet.redis.start_ready()
    for gateway in fleet.alive():
        until(
            partial(readyz_says, gateway.url, "connected"),
            f"{gateway.url} reconnected",
        )
    # Redis restarted empty: the replicas rewrote what they hold.
    until(lambda: all(all_connected(g.url) for g in fleet.alive()), "view rebuilt everywhere")


def test_a_killed_replicas_subsystems_come_back_through_the_balancer(fleet: Fleet) -> None:
    holders = fleet.holders()
    victim = max(fleet.alive(), key=lambda g: sum(h is g for h in holders.values()))
    moved = [subsystem_id for subsystem_id, gateway in holders.items() if gateway is victim]
    assert moved
    victim.kill()  # SIGKILL, Envoy and all
    fleet.balancer.wait_healthy([g.port for g in fleet.alive()])

    def back() -> bool:
        now = fleet.holders()
        return all(now[s] is not victim for s in moved) and all(
            all_connected(fleet.balancer.url) for _ in range(len(fleet.alive()))
        )

    until(back, f"{moved} registered again on a surviving replica and listed")


def test_a_draining_replica_sends_its_subsystems_elsewhere(fleet: Fleet) -> None:
    alive = fleet.alive()
    assert len(alive) >= 2
    holders = fleet.holders()
    leaving = max(alive, key=lambda g: sum(h is g for h in holders.values()))
    moved = [subsystem_id for subsystem_id, gateway in holders.items() if gateway is leaving]
    assert moved
    assert leaving.stop() == 0, leaving.logs()  # SIGTERM: drain first

    def back() -> bool:
        now = fleet.holders()
        return all(now[s] is not leaving for s in moved) and all_connected(fleet.balancer.url)

    until(back, f"{moved} moved off the drained replica")
