"""Fault tests with real processes: what the FlowWatch UI gets, and when.

One real gateway (pyvoy) with two healthy demo subsystems (`flowwatch-demo
subsystem`: the in-memory API under pyvoy, registered through the SDK) that every
test keeps; each test adds its own victim and breaks it: killed (SIGKILL), hung
(SIGSTOP: TCP stays open, nothing answers), a half-open endpoint (accepts TCP, never
sends a byte, while its Register stream is alive), slow (answers through a latency
relay, within the upstream timeout) and flapping (killed and restarted in a row).

Everything is observed as the UI observes it: Connect JSON over HTTP/1.1
(ListSubsystems, ListRuns, analytics, GetRun) and the `flowwatch-partial-failure`
response header. Every test takes more than 10 s (processes start, timeouts and
grace periods pass), so all are marked slow. "When" is stated in heartbeats and grace
periods; waits are bounded polls, and no assertion is about how long something took
(a loaded 2-core machine must not fail these tests): they assert states and headers.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from flowwatch_gateway.processes import Child, free_port
from tests.support.harness import (
    ROOT,
    GatewayProcess,
    SubsystemProcess,
    list_subsystems,
    start_gateway,
    start_subsystem,
    subsystem_states,
    wait_for_state,
)
from tests.support.latency import latency_relay
from tests.support.upstreams import hung_endpoint, post, wait_until

HEARTBEAT = "500ms"
GRACE = "2s"
GRACE_S = 2.0
UPSTREAM_TIMEOUT = "1500ms"
API_KEY = "faults-key"
HEALTHY = {"orders": 1, "payments": 2}
# Bounds for polls only (never asserted as durations): generous for a loaded machine.
STALE_WITHIN_S = 10.0
REMOVED_WITHIN_S = GRACE_S + 10.0
REGISTERED_WITHIN_S = 30.0
# Reconnect quickly after a removal or a refused attempt, so a test can watch it.
FAST_RECONNECT = ("--min-backoff", "100ms", "--max-backoff", "500ms")
# One way; a call's round trip through the relay takes twice this, well inside 1.5 s.
SLOW_DELAY_S = 0.2
FLAPS = 3


@dataclass
class Stack:
    gateway: GatewayProcess
    url: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with start_gateway(
        "--heartbeat",
        HEARTBEAT,
        "--grace-period",
        GRACE,
        "--upstream-timeout",
        UPSTREAM_TIMEOUT,
        "--api-key",
        API_KEY,
    ) as gateway:
        healthy: list[SubsystemProcess] = []
        try:
            # Started together: each is an Envoy plus Python, slow to start on 2 cores.
            for sid, seed in HEALTHY.items():
                healthy.append(
                    start_subsystem(
                        gateway.url, sid, "--seed", str(seed), api_key=API_KEY, wait=False
                    )
                )
            for subsystem in healthy:
                subsystem.wait_ready()
            for sid in HEALTHY:
                wait_for_state(gateway.url, sid, "connected", timeout=REGISTERED_WITHIN_S)
            yield Stack(gateway, gateway.url)
        finally:
            for subsystem in healthy:
                subsystem.close()


@pytest.fixture
def gw(stack: Stack) -> Stack:
    """The stack with only the healthy subsystems listed, connected: earlier victims gone."""
    baseline = dict.fromkeys(HEALTHY, "connected")
    wait_until(
        lambda: subsystem_states(stack.url) == baseline,
        REMOVED_WITHIN_S,
        f"only {sorted(baseline)} listed, connected",
    )
    return stack


# --- what the UI sees -----------------------------------------------------------------------


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def failures(response: httpx.Response) -> dict[str, str]:
    """The `flowwatch-partial-failure` header: subsystem id -> why it is missing."""
    header = response.headers.get("flowwatch-partial-failure", "")
    return dict(part.split(": ", 1) for part in header.split(", ") if part)


def list_runs(url: str) -> httpx.Response:
    """The UI's run list, unfiltered; fails the test unless it is answered (200)."""
    response = post(url, "RunService/ListRuns", {"pagination": {"limit": 100}})
    assert response.status_code == 200, response.text
    return response


def owners(response: httpx.Response) -> set[str]:
    return {run["subsystemId"] for run in response.json().get("runs", [])}


def entry(url: str, subsystem_id: str) -> dict[str, Any] | None:
    """The subsystem's one ListSubsystems entry (None when not listed), never two."""
    found = [s for s in list_subsystems(url) if s["subsystem"]["id"] == subsystem_id]
    assert len(found) <= 1, found
    return found[0] if found else None


def metadata(summary: dict[str, Any]) -> dict[str, str]:
    meta: dict[str, str] = summary["subsystem"].get("metadata", {})
    return meta


def listed_metadata(url: str, subsystem_id: str) -> dict[str, str]:
    """The gateway's view of a subsystem that must be listed."""
    shown = entry(url, subsystem_id)
    assert shown is not None, f"{subsystem_id} is not listed"
    return metadata(shown)


def accepted_registrations(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    match = re.search(
        r'^flowwatch_gateway_registrations_total\{result="accepted"\} (\S+)$', text, re.M
    )
    assert match, "no accepted registrations counter on /metrics"
    return int(float(match.group(1)))


def stale_reason(gateway: GatewayProcess, subsystem_id: str) -> str:
    """Why the gateway last marked the subsystem stale, from its log."""
    marker = f"subsystem stale: id={subsystem_id} "
    logs = gateway.logs()
    assert marker in logs, f"{subsystem_id} was never marked stale:\n{logs[-3000:]}"
    return logs.rsplit(marker, 1)[1].splitlines()[0]


def start_registrar(url: str, subsystem_id: str, endpoint: str) -> Child:
    """Registers `endpoint` with the API key and answers pings, in its own process.

    (upstreams.start_registrar presents no key; this gateway requires one.)
    """
    command = [sys.executable, "-m", "tests.support.harness", "subsystem", "--gateway", url]
    command += ["--id", subsystem_id, "--endpoint", endpoint, "--api-key", API_KEY]
    return Child(f"registrar {subsystem_id}", command, cwd=ROOT).start()


def start_victim(
    url: str, subsystem_id: str, *args: str, port: int | None = None
) -> SubsystemProcess:
    victim = start_subsystem(url, subsystem_id, *args, api_key=API_KEY, port=port)
    try:
        wait_for_state(url, subsystem_id, "connected", timeout=REGISTERED_WITHIN_S)
    except BaseException:
        print(victim.logs())
        victim.close()
        raise
    return victim


# --- the faults ----------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_subsystem_is_stale_at_once_with_its_last_stats_then_removed(gw: Stack) -> None:
    """SIGKILL: its Register stream ends, so the UI sees it stale on the next poll.

    What the UI gets, and when:
    - at once (the stream's end, not missed heartbeats): ListSubsystems lists it with
      `gateway.state=stale`, its last known stats (active runs and failures of the last
      answer it gave, not zeros that would look healthy), `gateway.stats_as_of` saying
      from when, and " — unreachable" appended to its name;
    - ListRuns answers with the other subsystems' runs and names it in
      `flowwatch-partial-failure` as "<id>: stale";
    - after the grace period it is removed: gone from the list and from the header
      (one dead subsystem of three is not enough for self-preservation, which needs
      3+ going stale together).
    """
    sid = unique_id("killed")
    with start_victim(gw.url, sid, "--seed", "3") as victim:
        # The UI's poll while it is healthy: the gateway remembers what it said.
        before = entry(gw.url, sid)
        assert before is not None and metadata(before)["gateway.answered"] == "true"
        active, failed = before.get("activeRuns", 0), before.get("failedLastHour", 0)
        assert active > 0 and failed > 0, before  # else "not zeroed" would prove nothing
        assert sid in owners(list_runs(gw.url))

        victim.kill()  # SIGKILL to the group: the supervisor and its Envoy with the client
        to_stale = wait_for_state(gw.url, sid, "stale", timeout=STALE_WITHIN_S)
        assert "reason=register stream ended" in stale_reason(gw.gateway, sid)

        shown = entry(gw.url, sid)
        assert shown is not None
        meta = metadata(shown)
        assert meta["gateway.state"] == "stale" and meta["gateway.answered"] == "false"
        assert meta.get("gateway.stats_as_of"), meta
        assert shown["subsystem"]["name"].endswith(" — unreachable"), shown
        assert (shown.get("activeRuns", 0), shown.get("failedLastHour", 0)) == (active, failed)

        runs = list_runs(gw.url)
        assert failures(runs) == {sid: "stale"}
        assert owners(runs) == set(HEALTHY)

        to_removed = wait_for_state(gw.url, sid, None, timeout=REMOVED_WITHIN_S)
        # Measured, not asserted (run with -s): when the UI saw it.
        print(f"SIGKILL -> stale after {to_stale:.2f}s, removed {to_removed:.2f}s later")
        after = list_runs(gw.url)
        assert failures(after) == {}
        assert owners(after) == set(HEALTHY)


@pytest.mark.slow
def test_hung_subsystem_times_out_goes_stale_after_two_heartbeats_and_recovers(
    gw: Stack,
) -> None:
    """SIGSTOP: TCP stays open on both legs (Register stream and API), nothing answers.

    What the UI gets, and when:
    - right away, while its last pong is less than 2 heartbeats old: it is still
      connected, so ListRuns asks it; that call runs into the upstream timeout and the
      answer carries the others' runs with "<id>: timed out" in
      `flowwatch-partial-failure` (never an error, never the caller's whole deadline);
    - after 2 heartbeats without a pong: stale (logged as "no pong"); ListRuns no
      longer waits for it and names it "<id>: stale";
    - after SIGCONT: connected again (its stream answers pings again, or its client
      reconnects and replaces the registration at once), listed once, and ListRuns
      has its runs and no partial-failure header.
    """
    sid = unique_id("frozen")
    with start_victim(gw.url, sid, "--seed", "4", *FAST_RECONNECT) as victim:
        assert sid in owners(list_runs(gw.url))
        # Freeze right after a pong arrived, so the timed-out call surely starts while
        # the gateway still counts it connected (stale needs 2 heartbeats of silence).
        seen = listed_metadata(gw.url, sid)["gateway.last_heartbeat"]
        wait_until(
            lambda: listed_metadata(gw.url, sid)["gateway.last_heartbeat"] != seen,
            STALE_WITHIN_S,
            "a fresh heartbeat",
        )
        os.killpg(victim.pid, signal.SIGSTOP)
        try:
            hung = list_runs(gw.url)
            assert failures(hung) == {sid: "timed out"}
            assert owners(hung) == set(HEALTHY)

            to_stale = wait_for_state(gw.url, sid, "stale", timeout=STALE_WITHIN_S)
            assert "reason=no pong" in stale_reason(gw.gateway, sid)
            stale = list_runs(gw.url)
            assert failures(stale) == {sid: "stale"}
            assert owners(stale) == set(HEALTHY)
        finally:
            os.killpg(victim.pid, signal.SIGCONT)

        to_back = wait_for_state(gw.url, sid, "connected", timeout=REGISTERED_WITHIN_S)
        print(
            f"SIGSTOP -> stale {to_stale:.2f}s after the timed-out call; SIGCONT -> "
            f"connected after {to_back:.2f}s (heartbeat {HEARTBEAT})"
        )
        assert entry(gw.url, sid) is not None  # and only once (entry checks)

        def whole() -> bool:
            runs = list_runs(gw.url)
            return failures(runs) == {} and owners(runs) == {*HEALTHY, sid}

        wait_until(whole, REGISTERED_WITHIN_S, "ListRuns with every subsystem, no failure")


@pytest.mark.slow
def test_half_open_endpoint_is_named_timed_out_while_the_others_answer(gw: Stack) -> None:
    """An endpoint that accepts TCP and never sends a byte, its Register stream alive.

    What the UI gets, and when: on every call, for as long as this lasts (its
    heartbeats keep it connected, so it is asked each time and never goes stale):
    - ListSubsystems lists it connected, with `gateway.answered=false`;
    - ListRuns and analytics (GetThroughput) answer with the others' data once the
      upstream timeout passes, naming it "<id>: timed out";
    - GetRun of a run nobody knows is `deadline_exceeded` naming it ("<id> (timed
      out)"), not `not_found`: the subsystem that did not answer might own the run.
    """
    sid = unique_id("halfopen")
    with hung_endpoint() as endpoint, start_registrar(gw.url, sid, endpoint) as registrar:
        try:
            wait_for_state(gw.url, sid, "connected", timeout=REGISTERED_WITHIN_S)
        except BaseException:
            print(registrar.logs())
            raise
        shown = entry(gw.url, sid)
        assert shown is not None
        assert metadata(shown)["gateway.state"] == "connected"
        assert metadata(shown)["gateway.answered"] == "false"

        runs = list_runs(gw.url)
        assert failures(runs) == {sid: "timed out"}
        assert owners(runs) == set(HEALTHY)

        throughput = post(gw.url, "AnalyticsService/GetThroughput", {"filter": {}})
        assert throughput.status_code == 200, throughput.text
        assert sum(int(b.get("total", 0)) for b in throughput.json()["buckets"]) > 0
        assert failures(throughput) == {sid: "timed out"}

        unknown = post(gw.url, "RunService/GetRun", {"runId": "nobody-run-00001"})
        # Not not_found: the one that did not answer might own it. Time ran out for every
        # subsystem that did not answer, so deadline_exceeded (unavailable when one was
        # unreachable or stale instead).
        assert unknown.status_code == 504, unknown.text
        assert unknown.json()["code"] == "deadline_exceeded"
        assert f"{sid} (timed out)" in unknown.json()["message"]
        # Still connected: a hung API alone never makes a subsystem stale.
        assert subsystem_states(gw.url)[sid] == "connected"


@pytest.mark.slow
def test_slow_subsystem_within_the_upstream_timeout_is_answered_not_a_failure(
    gw: Stack,
) -> None:
    """Every byte to and from its API is delayed (0.4 s a round trip; the timeout is 1.5 s).

    What the UI gets, and when: its answers, later by that delay, and nothing marked as
    missing: ListRuns has its runs, GetRun of one of them is answered, ListSubsystems
    shows it connected and answered, and no call carries `flowwatch-partial-failure`.
    """
    sid = unique_id("slow")
    port = free_port()
    with (
        latency_relay(port, SLOW_DELAY_S) as relay,
        start_victim(gw.url, sid, "--seed", "5", "--endpoint", relay.url, port=port),
    ):
        shown = entry(gw.url, sid)
        assert shown is not None
        meta = metadata(shown)
        # The gateway calls it through the relay, so every call it makes is slow.
        assert meta["gateway.endpoint"] == relay.url
        assert meta["gateway.answered"] == "true"
        assert failures(post(gw.url, "WorkflowService/ListSubsystems", {})) == {}

        runs = list_runs(gw.url)
        assert failures(runs) == {}
        assert owners(runs) == {*HEALTHY, sid}

        run_id = next(r["id"] for r in runs.json()["runs"] if r["subsystemId"] == sid)
        delayed_before = relay.chunks
        got = post(gw.url, "RunService/GetRun", {"runId": run_id})
        assert got.status_code == 200, got.text
        assert got.json()["run"]["id"] == run_id
        assert failures(got) == {}
        assert relay.chunks > delayed_before  # answered by the slow subsystem itself


@pytest.mark.slow
def test_flapping_subsystem_is_replaced_at_once_and_converges_to_connected(
    gw: Stack,
) -> None:
    """Killed (SIGKILL) and restarted on the same port, several times in a row.

    What the UI gets, and when: after each kill it is listed stale with its last
    stats (as in the killed case); as soon as the restarted process registers (the
    same endpoint) that registration replaces the old one: one entry, never two, with
    a new `gateway.registration`. After the last restart it is connected, ListRuns
    has its runs with no partial failure, and the gateway accepted one registration
    per restart (counted on /metrics), not a storm.
    """
    sid = unique_id("flappy")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with start_victim(gw.url, sid, "--seed", "6", *FAST_RECONNECT, port=port) as victim:
        accepted_before = accepted_registrations(gw.url)
        registration = {
            name: listed_metadata(gw.url, name)["gateway.registration"] for name in HEALTHY
        }
        current = listed_metadata(gw.url, sid)["gateway.registration"]
        seen = {current}
        for _ in range(FLAPS):
            victim.kill()
            wait_for_state(gw.url, sid, "stale", timeout=STALE_WITHIN_S)
            victim.start().wait_ready()

            def replaced(previous: str = current) -> bool:
                shown = entry(gw.url, sid)  # asserts one entry at most
                if shown is None:
                    return False
                meta = metadata(shown)
                assert "," not in meta["gateway.instance"], meta  # one instance behind it
                return (
                    meta["gateway.state"] == "connected"
                    and meta["gateway.registration"] != previous
                )

            wait_until(replaced, REGISTERED_WITHIN_S, f"{sid} registered again")
            meta = listed_metadata(gw.url, sid)
            assert meta["gateway.endpoint"] == endpoint
            current = meta["gateway.registration"]
            seen.add(current)

        assert len(seen) == FLAPS + 1
        assert subsystem_states(gw.url) == {**dict.fromkeys(HEALTHY, "connected"), sid: "connected"}

        def whole() -> bool:
            runs = list_runs(gw.url)
            return failures(runs) == {} and owners(runs) == {*HEALTHY, sid}

        wait_until(whole, REGISTERED_WITHIN_S, "ListRuns with every subsystem, no failure")
        # Healthy subsystems that had to re-register meanwhile (a loaded machine) count too.
        rejoined = sum(
            listed_metadata(gw.url, name)["gateway.registration"] != before
            for name, before in registration.items()
        )
        assert accepted_registrations(gw.url) - accepted_before == FLAPS + rejoined
