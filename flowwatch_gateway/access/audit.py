"""The audit trail: who did which action to which run, and how it ended.

One record per run id (a bulk action over 40 runs is 40 records), as one JSON
object on one line:

    {"time": "2026-12-08T01:20:52.123Z", "replica": "gw-1", "subject": "alice",
     "groups": ["sre"], "source": "oidc", "role": "operator", "rpc": "RetryRun",
     "run_id": "r-42", "owner": "orders", "result": "ok", "request_id": "...",
     "traceparent": "00-...", "peer": "10.0.0.7"}

Every record goes to the logger `flowwatch_gateway.audit` at INFO, with the JSON
line as its message: serving/logs.py keeps that complete and on one line in both
formats (the text format prints it after its prefix; the JSON format carries it as
`event`, plus `rpc`, `run_id` and `result` as keys of their own so a pipeline can
filter without parsing it). With GATEWAY_AUDIT_LOG the same line is appended to that
file too, which is the copy to keep: it does not depend on the log level or on where
stderr goes.

The file is opened once, line-buffered, and reopened when it has been moved away
(logrotate's default rename-and-create) or cannot be written any more. A failure to
write never reaches the request: it is logged once per failing stretch, and how
many records the file missed is logged when it works again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from flowwatch_gateway.access.identity import Caller
from flowwatch_gateway.access.policy import Role
from flowwatch_gateway.registry.base import Clock, SystemClock

__all__ = ["AUDIT_LOGGER", "ActionSink", "AuditTrail"]

AUDIT_LOGGER = "flowwatch_gateway.audit"
# Audit records name people; the file is not for every local user to read.
FILE_MODE = 0o640

# The audit logger carries records only; trouble with the file is reported apart.
log = logging.getLogger(__name__)


class ActionSink(Protocol):
    """Counts actions by rpc and result (serving/metrics.py's GatewayMetrics)."""

    def action(self, rpc: str, result: str) -> None: ...


class _AppendFile:
    """A file appended to line by line that follows logrotate's renames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._identity: tuple[int, int] | None = None  # device, inode of what is open
        self._failing = False
        self._missed = 0
        self._lock = threading.Lock()
        with self._lock:
            try:
                self._file = self._open()
            except OSError as exc:
                self._fail(exc)

    def write(self, line: str) -> None:
        with self._lock:
            try:
                file = self._file
                if file is None or self._moved():
                    self._close()
                    file = self._file = self._open()
                file.write(line + "\n")  # line-buffered: written out at the newline
            except OSError as exc:
                self._missed += 1
                self._close()  # the next record reopens it
                self._fail(exc)
                return
            if self._failing:
                self._failing = False
                log.warning(
                    "GATEWAY_AUDIT_LOG %s is written again; %d audit record(s) went to the "
                    "log only meanwhile",
                    self.path,
                    self._missed,
                )
                self._missed = 0

    def close(self) -> None:
        with self._lock:
            self._close()

    def _open(self) -> TextIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            stat = os.fstat(fd)
            file = open(fd, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - kept open
        except BaseException:
            os.close(fd)
            raise
        self._identity = (stat.st_dev, stat.st_ino)
        return file

    def _moved(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def _close(self) -> None:
        file, self._file, self._identity = self._file, None, None
        if file is not None:
            # What it could not flush was already counted as missed.
            with contextlib.suppress(OSError):
                file.close()

    def _fail(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.error(
                "GATEWAY_AUDIT_LOG %s cannot be written (%s); audit records go to the log "
                "only until it can",
                self.path,
                exc,
            )


def _rfc3339(moment: datetime) -> str:
    """UTC with milliseconds and a Z, e.g. 2026-12-08T01:20:52.123Z."""
    utc = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    return utc.removesuffix("+00:00") + "Z"


class AuditTrail:
    """Records actions (`record`) to the audit logger, the audit file and the metric."""

    def __init__(
        self,
        replica: str,
        path: Path | None,
        sink: ActionSink | None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.replica = replica
        self._file = _AppendFile(path) if path is not None else None
        self._sink = sink
        self._clock: Clock = clock or SystemClock()
        self._log = logging.getLogger(AUDIT_LOGGER)

    def record(
        self,
        *,
        caller: Caller,
        role: Role | None,
        rpc: str,
        run_id: str,
        owner: str | None,
        code: str,
        request_id: str | None,
        traceparent: str | None,
        peer: str | None,
    ) -> None:
        """One action on one run; `code` is "ok" or a Connect code name in lower case."""
        entry = {
            "time": _rfc3339(self._clock.now()),
            "replica": self.replica,
            "subject": caller.user,
            "groups": sorted(caller.groups),
            "source": caller.source,
            "role": role.label if role is not None else None,
            "rpc": rpc,
            "run_id": run_id,
            "owner": owner,
            "result": code,
            "request_id": request_id,
            "traceparent": traceparent,
            "peer": peer,
        }
        # ensure_ascii: whatever a client put in a run id, the record stays one line.
        line = json.dumps(entry, ensure_ascii=True)
        self._log.info("%s", line, extra={"rpc": rpc, "run_id": run_id, "result": code})
        if self._file is not None:
            self._file.write(line)
        if self._sink is not None:
            self._sink.action(rpc, code)

    def close(self) -> None:
        """Close the audit file (at shutdown); later records reopen it."""
        if self._file is not None:
            self._file.close()
