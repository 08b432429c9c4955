"""A gateway registered as a subsystem of another answers for its own subsystems.

Real processes: a child gateway with a demo subsystem registered to it, and a
parent gateway to which the child's endpoint is registered. Through the parent, the
child's runs keep naming the child's subsystem (no registration at the parent holds
that id), and per-run calls and actions reach it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flowwatch_gateway.processes import Child
from tests.support.harness import (
    GatewayProcess,
    SubsystemProcess,
    start_gateway,
    start_subsystem,
    wait_for_state,
)
from tests.support.upstreams import post, start_registrar

CHILD_SUBSYSTEM = "eu-orders"


@dataclass
class Federation:
    parent: GatewayProcess
    child: GatewayProcess
    subsystem: SubsystemProcess
    registrar: Child


@pytest.fixture(scope="module")
def federation() -> Iterator[Federation]:
    with (
        start_gateway() as child,
        start_gateway() as parent,
        start_subsystem(child.url, CHILD_SUBSYSTEM) as subsystem,
    ):
        wait_for_state(child.url, CHILD_SUBSYSTEM, "connected")
        registrar = start_registrar(parent.url, "eu-gateway", child.url)
        try:
            # The parent lists the child's subsystem, as the child reports it.
            wait_for_state(parent.url, CHILD_SUBSYSTEM, "connected")
            yield Federation(parent, child, subsystem, registrar)
        finally:
            registrar.close()


def test_runs_through_the_parent_name_the_childs_subsystem(federation: Federation) -> None:
    listed = post(federation.parent.url, "RunService/ListRuns", {"pagination": {"limit": 20}})
    assert listed.status_code == 200, listed.text
    rows = listed.json()["runs"]
    assert rows
    assert {row["subsystemId"] for row in rows} == {CHILD_SUBSYSTEM}

    run_id = rows[0]["id"]
    got = post(federation.parent.url, "RunService/GetRun", {"runId": run_id})
    assert got.status_code == 200, got.text
    assert got.json()["run"]["subsystemId"] == CHILD_SUBSYSTEM


def test_an_action_through_the_parent_reaches_the_childs_subsystem(
    federation: Federation,
) -> None:
    listed = post(
        federation.parent.url,
        "RunService/ListRuns",
        {"filter": {"statuses": ["RUN_STATUS_RUNNING"]}, "pagination": {"limit": 5}},
    )
    assert listed.status_code == 200, listed.text
    run_id = listed.json()["runs"][0]["id"]

    cancelled = post(federation.parent.url, "RunService/CancelRun", {"runId": run_id})
    assert cancelled.status_code == 200, cancelled.text
    # The child's subsystem changed the run: both gateways now show it cancelled.
    for gateway in (federation.child, federation.parent):
        got = post(gateway.url, "RunService/GetRun", {"runId": run_id})
        assert got.json()["run"]["status"] == "RUN_STATUS_CANCELED", got.text
