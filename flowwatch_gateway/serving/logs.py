"""Log output: today's text lines or one JSON object per line (GATEWAY_LOG_FORMAT).

The key log calls (registered, stale, removed, rejected, partial failures) pass
`extra={"subsystem_id": ..., "registration_id": ..., "rpc": ...}`; the JSON format
turns every such extra field into a key, so a log pipeline can filter by subsystem
without parsing the message. The text format prints the message only: it already
names the subsystem for a human.

Messages carry what subsystems and clients sent (names, endpoints, error texts), so
neither format lets such text start a line of its own or move a terminal's cursor:
JSON escapes it, and the text format writes every control character (C0, DEL, C1,
U+2028/U+2029) as a backslash escape. A text record is one line; a traceback
follows it indented, so no line of one can pass for a record.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "escape_controls"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


# Every character that can end a line or steer a terminal, and how the text format
# writes it: the escapes Python's repr uses.
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_ESCAPES = {code: repr(chr(code))[1:-1] for code in _CONTROLS}
_ESCAPES_BUT_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}
TRACEBACK_INDENT = "    "


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u2028)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, one line per record whatever the message holds; tracebacks indented."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        # The whole line, so fields a format string might add are escaped too.
        text = escape_controls(self.formatMessage(record))
        # Not record.exc_text: another handler's formatter may have cached it unindented.
        details = [self.formatException(record.exc_info)] if record.exc_info else []
        if not details and record.exc_text:  # a record formatted elsewhere first
            details.append(record.exc_text)
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for detail in details:
            # Exception messages quote clients too: only the traceback's own line
            # breaks stay, and each of its lines is indented below the record.
            for line in detail.translate(_ESCAPES_BUT_NEWLINE).splitlines():
                text += "\n" + TRACEBACK_INDENT + line
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, event, logger, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = _json_value(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii keeps each record on one line whatever a subsystem sent us.
        return json.dumps(entry, ensure_ascii=True, allow_nan=False)


def _json_value(value: object) -> str | int | float | bool:
    """What JSON can hold as it is; anything else (NaN too: not JSON) as its str()."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str | int | float | bool) else str(value)


def configure_logging(level: str, log_format: str = "text") -> None:
    """One log format for the supervisor and the app inside Envoy (both write to stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
