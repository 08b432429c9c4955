"""One bad subsystem never breaks answers from the healthy ones.

Behind a real gateway: a healthy demo subsystem, a hung one (accepts TCP, never
answers) and a dead one (connection refused), all registered and heartbeating.
Answers must arrive within the deadline with the failures named.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import GatewayProcess, start_gateway, subsystem_states
from tests.support.upstreams import (
    dead_endpoint,
    hung_endpoint,
    post,
    start_demo_server,
    start_registrar,
    wait_until,
)

UPSTREAM_TIMEOUT_S = 2.0
# Generous bound for "answered within the deadline" on a loaded 2-core CI machine.
ANSWER_BOUND_S = UPSTREAM_TIMEOUT_S + 2.0


@dataclass
class Stack:
    gateway: GatewayProcess
    healthy: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    processes: list[Child] = []
    with (
        hung_endpoint() as hung,
        start_gateway(
            "--heartbeat", "500ms", "--grace-period", "5s", "--upstream-timeout", "2s"
        ) as gateway,
    ):
        try:
            server, healthy = start_demo_server("orders", 1, datetime.now(UTC))
            processes.append(server)
            for sid, endpoint in (("orders", healthy), ("hung", hung), ("dead", dead_endpoint())):
                processes.append(start_registrar(gateway.url, sid, endpoint))
            wait_until(
                lambda: (
                    subsystem_states(gateway.url)
                    == {"orders": "connected", "hung": "connected", "dead": "connected"}
                ),
                20,
                "three registrations",
            )
            yield Stack(gateway, healthy)
            # Proxying (pyqwest inside Envoy) must not spoil a clean shutdown.
            assert gateway.stop() == 0
        finally:
            for proc in processes:
                proc.close()


def timed_post(
    url: str, rpc: str, body: dict[str, object], **headers: str
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/flowwatch.v1.{rpc}",
        json=body,
        headers={"Connect-Protocol-Version": "1", **headers},
        timeout=15,
    )
    return response, time.monotonic() - started


def failures(response: httpx.Response) -> dict[str, str]:
    header = response.headers.get("flowwatch-partial-failure", "")
    return dict(part.split(": ", 1) for part in header.split(", ") if part)


def test_list_runs_answers_with_healthy_data_and_names_the_failures(stack: Stack) -> None:
    response, elapsed = timed_post(
        stack.gateway.url, "RunService/ListRuns", {"pagination": {"limit": 10}}
    )
    assert response.status_code == 200, response.text
    assert elapsed < ANSWER_BOUND_S
    runs = response.json()["runs"]
    assert len(runs) == 10 and {r["subsystemId"] for r in runs} == {"orders"}
    assert failures(response) == {"dead": "unavailable", "hung": "timed out"}


def test_the_callers_own_deadline_is_respected(stack: Stack) -> None:
    response, elapsed = timed_post(
        stack.gateway.url,
        "RunService/ListRuns",
        {"pagination": {"limit": 5}},
        **{"Connect-Timeout-Ms": "400"},
    )
    assert response.status_code == 200, response.text
    # Well below the 2 s upstream timeout the gateway would otherwise wait for `hung`.
    assert elapsed < 1.2
    assert len(response.json()["runs"]) == 5
    assert failures(response)["hung"] == "timed out"


def test_subsystem_list_shows_every_registration(stack: Stack) -> None:
    response, elapsed = timed_post(stack.gateway.url, "WorkflowService/ListSubsystems", {})
    assert response.status_code == 200 and elapsed < ANSWER_BOUND_S
    meta = {s["subsystem"]["id"]: s["subsystem"]["metadata"] for s in response.json()["subsystems"]}
    assert meta["orders"]["gateway.answered"] == "true"
    assert meta["hung"]["gateway.answered"] == "false"
    assert meta["dead"]["gateway.answered"] == "false"
    assert {m["gateway.state"] for m in meta.values()} == {"connected"}


def test_a_run_is_found_while_one_subsystem_hangs(stack: Stack) -> None:
    """A lookup waits for every subsystem (no first answer wins a run), within the
    deadline: the hung one is named, and the owner's answer comes back."""
    response, _ = timed_post(stack.gateway.url, "RunService/GetRun", {"runId": "orders-run-00011"})
    assert response.status_code == 200, response.text
    assert response.json()["run"]["id"] == "orders-run-00011"
    assert response.json()["run"]["subsystemId"] == "orders"


def test_unknown_run_is_unavailable_not_not_found_while_some_did_not_answer(stack: Stack) -> None:
    response, elapsed = timed_post(stack.gateway.url, "RunService/GetRun", {"runId": "who-run-1"})
    assert elapsed < ANSWER_BOUND_S
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "unavailable"
    assert "hung (timed out)" in body["message"] and "dead (unavailable)" in body["message"]


def test_analytics_merge_what_answered(stack: Stack) -> None:
    response, elapsed = timed_post(
        stack.gateway.url, "AnalyticsService/GetThroughput", {"filter": {}}
    )
    assert response.status_code == 200 and elapsed < ANSWER_BOUND_S
    assert sum(int(b.get("total", 0)) for b in response.json()["buckets"]) > 0
    assert set(failures(response)) == {"hung", "dead"}


def test_only_failing_subsystems_asked_is_unavailable(stack: Stack) -> None:
    response, elapsed = timed_post(
        stack.gateway.url,
        "RunService/ListRuns",
        {"filter": {"subsystemIds": ["hung", "dead"]}},
    )
    assert elapsed < ANSWER_BOUND_S
    assert response.status_code == 503
    assert response.json()["code"] == "unavailable"
    assert "no subsystem answered" in response.json()["message"]


def test_json_errors_reach_the_ui_with_cors(stack: Stack) -> None:
    response = post(stack.gateway.url, "RunService/GetRun", {})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_a_subsystem_that_registers_before_it_listens_is_discovered_later(stack: Stack) -> None:
    port = free_port()
    registrar = start_registrar(stack.gateway.url, "late", f"http://127.0.0.1:{port}")
    server = None
    try:
        wait_until(
            lambda: subsystem_states(stack.gateway.url).get("late") == "connected", 10, "late"
        )
        time.sleep(1.0)  # a first discovery attempt fails: nothing listens yet
        server, _ = start_demo_server("late", 7, datetime.now(UTC), port=port)

        def discovered() -> bool:
            answer = post(
                stack.gateway.url, "WorkflowService/GetSubsystem", {"subsystemId": "late"}
            )
            return answer.status_code == 200 and len(answer.json().get("workflows", [])) == 4

        wait_until(discovered, 15, "discovery of the late subsystem's workflows")
        graph = post(stack.gateway.url, "WorkflowService/GetGraph", {"workflowId": "late-intake"})
        assert graph.status_code == 200
    finally:
        registrar.close()
        if server is not None:
            server.close()


def test_a_run_is_unavailable_not_not_found_while_its_owner_is_stale(stack: Stack) -> None:
    """A subsystem that misses heartbeats may own the run: not_found would be a lie."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    registrar = start_registrar(stack.gateway.url, "blinking", endpoint)
    try:
        wait_until(
            lambda: subsystem_states(stack.gateway.url).get("blinking") == "connected", 10, "blink"
        )
        registrar.proc.send_signal(signal.SIGSTOP)  # stops answering pings: goes stale
        wait_until(
            lambda: subsystem_states(stack.gateway.url).get("blinking") == "stale", 10, "stale"
        )
        response, _ = timed_post(stack.gateway.url, "RunService/CancelRun", {"runId": "b-run-1"})
        assert response.status_code == 503, response.text
        assert "blinking (unavailable)" in response.json()["message"]
    finally:
        registrar.proc.send_signal(signal.SIGCONT)
        registrar.close()
