"""The audit trail: the record, the log formats, the file (and logrotate), the metric."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowwatch_gateway.access.audit import AUDIT_LOGGER, AuditTrail
from flowwatch_gateway.access.identity import Caller
from flowwatch_gateway.access.policy import Role
from flowwatch_gateway.registry.memory import InMemoryRegistry
from flowwatch_gateway.serving.logs import JsonFormatter, TextFormatter
from flowwatch_gateway.serving.metrics import GatewayMetrics
from flowwatch_gateway.serving.status import UpstreamHealth
from tests.support.harness import FakeClock

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRAIL_LOGGER = "flowwatch_gateway.access.audit"  # trouble with the file, not records


def caller(user: str | None, groups: Iterable[str] = (), source: str = "oidc") -> Caller:
    return Caller(user=user, groups=frozenset(groups), source=source, email=None)


def act(trail: AuditTrail, run_id: str = "r-1", **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "caller": caller("alice", ["web", "sre"]),
        "role": Role.OPERATOR,
        "rpc": "RetryRun",
        "run_id": run_id,
        "owner": "orders",
        "code": "ok",
        "request_id": "req-7",
        "traceparent": TRACEPARENT,
        "peer": "10.0.0.7",
    }
    fields.update(overrides)
    trail.record(**fields)


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == AUDIT_LOGGER]


def test_one_record_is_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, AUDIT_LOGGER)
    trail = AuditTrail("gw-1", None, None, clock=FakeClock())
    act(trail)
    (record,) = audit_records(caplog)
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-01-01T00:00:00.000Z",
        "replica": "gw-1",
        "subject": "alice",
        "groups": ["sre", "web"],
        "source": "oidc",
        "role": "operator",
        "rpc": "RetryRun",
        "run_id": "r-1",
        "owner": "orders",
        "result": "ok",
        "request_id": "req-7",
        "traceparent": TRACEPARENT,
        "peer": "10.0.0.7",
    }
    assert list(json.loads(line)) == [
        "time",
        "replica",
        "subject",
        "groups",
        "source",
        "role",
        "rpc",
        "run_id",
        "owner",
        "result",
        "request_id",
        "traceparent",
        "peer",
    ]


def test_an_anonymous_refused_action_has_nulls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, AUDIT_LOGGER)
    trail = AuditTrail("gw-1", None, None, clock=FakeClock())
    act(
        trail,
        caller=caller(None, source="anonymous"),
        role=None,
        owner=None,
        code="permission_denied",
        request_id=None,
        traceparent=None,
        peer=None,
    )
    entry = json.loads(audit_records(caplog)[0].getMessage())
    assert entry["subject"] is None and entry["groups"] == [] and entry["role"] is None
    assert entry["source"] == "anonymous" and entry["result"] == "permission_denied"
    assert entry["owner"] is None and entry["request_id"] is None and entry["peer"] is None


def test_a_bulk_action_is_one_record_per_run_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, AUDIT_LOGGER)
    clock = FakeClock()
    trail = AuditTrail("gw-2", None, None, clock=clock)
    for number in range(3):
        act(trail, f"r-{number}", rpc="BulkRetry", code="ok" if number else "not_found")
        clock.advance(0.0015)
    entries = [json.loads(record.getMessage()) for record in audit_records(caplog)]
    assert [e["run_id"] for e in entries] == ["r-0", "r-1", "r-2"]
    assert [e["result"] for e in entries] == ["not_found", "ok", "ok"]
    assert [e["time"] for e in entries] == [
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.001Z",
        "2026-01-01T00:00:00.003Z",
    ]


def test_the_record_is_complete_and_one_line_in_both_log_formats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, AUDIT_LOGGER)
    trail = AuditTrail("gw-1", None, None, clock=FakeClock())
    hostile = "r-1\n2026-01-01 INFO fake: forged\x1b[2J\u2028"
    act(trail, hostile, caller=caller("mallory\r\n", ["a\nb"]))
    (record,) = audit_records(caplog)
    expected = json.loads(record.getMessage())
    assert expected["run_id"] == hostile and expected["subject"] == "mallory\r\n"

    text = TextFormatter().format(record)
    assert "\n" not in text and "\x1b" not in text and "\u2028" not in text
    prefix = "INFO flowwatch_gateway.audit: "
    assert prefix in text
    assert json.loads(text.split(prefix, 1)[1]) == expected

    as_json = JsonFormatter().format(record)
    assert "\n" not in as_json
    entry = json.loads(as_json)
    assert entry["logger"] == AUDIT_LOGGER and entry["level"] == "info"
    assert json.loads(entry["event"]) == expected
    # Filterable without parsing the event.
    assert (entry["rpc"], entry["run_id"], entry["result"]) == ("RetryRun", hostile, "ok")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_appended_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"earlier": true}\n')
    trail = AuditTrail("gw-1", path, None, clock=FakeClock())
    act(trail, "r-1")
    act(trail, "r-2")
    # Line-buffered: each record is in the file as soon as record() returns.
    assert [e.get("run_id") for e in lines(path)] == [None, "r-1", "r-2"]
    assert path.read_text().endswith("\n")
    trail.close()


def test_a_new_file_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old_umask = os.umask(0)
    try:
        AuditTrail("gw-1", path, None, clock=FakeClock()).close()
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_file_moved_away_by_logrotate_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotated = tmp_path / "audit.log.1"
    trail = AuditTrail("gw-1", path, None, clock=FakeClock())
    act(trail, "r-1")
    path.rename(rotated)
    act(trail, "r-2")
    act(trail, "r-3")
    assert [e["run_id"] for e in lines(rotated)] == ["r-1"]
    assert [e["run_id"] for e in lines(path)] == ["r-2", "r-3"]
    # Rotated again, with a new file already created by logrotate (`create`).
    path.rename(tmp_path / "audit.log.2")
    path.write_text("")
    act(trail, "r-4")
    assert [e["run_id"] for e in lines(path)] == ["r-4"]
    trail.close()


def trail_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == TRAIL_LOGGER and r.levelno >= logging.ERROR
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_logged_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        trail = AuditTrail("gw-1", directory / "audit.log", None, clock=FakeClock())
        act(trail, "r-1")
        act(trail, "r-2")
    finally:
        directory.chmod(0o755)
    assert len(trail_errors(caplog)) == 1
    assert len(audit_records(caplog)) == 2  # the log still has them


def test_a_file_that_cannot_be_opened_is_logged_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Works as root too: no permission can make a missing directory writable.
    caplog.set_level(logging.INFO)
    directory = tmp_path / "gone"
    path = directory / "audit.log"
    trail = AuditTrail("gw-1", path, None, clock=FakeClock())
    act(trail, "r-1")
    act(trail, "r-2")
    (error,) = trail_errors(caplog)
    assert f"GATEWAY_AUDIT_LOG {path} cannot be written" in error
    assert len(audit_records(caplog)) == 2
    directory.mkdir()
    act(trail, "r-3")
    assert [e["run_id"] for e in lines(path)] == ["r-3"]
    recovered = [r.getMessage() for r in caplog.records if "is written again" in r.getMessage()]
    assert recovered and "2 audit record(s) went to the log only" in recovered[0]
    trail.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failing_write_is_logged_once_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trail = AuditTrail("gw-1", Path("/dev/full"), None, clock=FakeClock())
    for number in range(3):
        act(trail, f"r-{number}")  # every write fails: ENOSPC
    (error,) = trail_errors(caplog)
    assert "No space left on device" in error
    assert len(audit_records(caplog)) == 3
    trail.close()


def scrape(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, body = metrics.exposition()
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_metric_counts_actions_by_rpc_and_result() -> None:
    clock = FakeClock()
    registry = InMemoryRegistry(clock)
    metrics = GatewayMetrics(registry, UpstreamHealth(registry, clock))
    trail = AuditTrail("gw-1", None, metrics, clock=clock)
    act(trail, "r-1")
    act(trail, "r-2")
    act(trail, "r-3", rpc="CancelRun", code="permission_denied")
    act(trail, "r-4", rpc="BulkCancel", code="ok")
    act(trail, "r-5", rpc="BulkCancel", code="not_found")
    samples = scrape(metrics)
    name = "flowwatch_gateway_actions_total"

    def count(rpc: str, result: str) -> float:
        return samples[(name, (("result", result), ("rpc", rpc)))]

    assert count("RetryRun", "ok") == 2
    assert count("CancelRun", "permission_denied") == 1
    assert count("BulkCancel", "ok") == 1
    assert count("BulkCancel", "not_found") == 1
    assert sum(value for (sample, _), value in samples.items() if sample == name) == 5
