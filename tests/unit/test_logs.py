"""Log output a client cannot steer: one line per record, no control characters."""

from __future__ import annotations

import json
import logging
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowwatch_gateway.serving.logs import TEXT_FORMAT, JsonFormatter, TextFormatter

# One of each class: C0 (line feed, carriage return, escape, NUL, vertical tab, file
# separator), DEL, C1 (NEL, CSI), and the Unicode line and paragraph separators.
CONTROLS = [
    "\n",
    "\r",
    "\x1b",
    "\x00",
    "\x0b",
    "\x1c",
    "\t",
    "\x7f",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",
]
FORGED = "FAKE LOG LINE level=ERROR"


def record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad input\n{FORGED}\r")
        except ValueError:
            exc_info = sys.exc_info()
    entry = logging.LogRecord(
        "flowwatch_gateway.x", logging.INFO, __file__, 1, message, args, exc_info
    )
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029)


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_text_format_escapes_each_control_class_in_message_args_and_fields(control: str) -> None:
    formatter = TextFormatter(TEXT_FORMAT + " peer=%(peer)s")
    line = formatter.format(
        record(f"name{control}%s", f"x{control}{FORGED}", peer=f"10.0.0.1{control}{FORGED}")
    )
    assert not any(is_control(char) for char in line)
    assert line.splitlines() == [line]
    assert repr(control)[1:-1] in line  # written as the escape Python's repr uses


@given(text=st.text())
def test_no_text_makes_a_second_line_or_a_control_character(text: str) -> None:
    line = TextFormatter().format(record("subsystem rejected: name=%s", text))
    assert not any(is_control(char) for char in line)
    assert len(line.splitlines()) == 1


def test_a_traceback_keeps_its_lines_but_none_can_pass_for_a_record() -> None:
    text = TextFormatter().format(record("failed: %s", f"x\n{FORGED}", exc=True))
    lines = text.split("\n")
    assert lines[0].endswith(f"failed: x\\n{FORGED}")
    assert lines[1] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in lines[1:])
    assert not any(is_control(char) for line in lines for char in line)
    assert not any(line.startswith(FORGED) for line in lines)
    assert lines[-2:] == ["    ValueError: bad input", f"    {FORGED}\\r"]


@given(message=st.text(), field=st.text(), number=st.floats())
def test_json_format_stays_one_valid_json_line(message: str, field: str, number: float) -> None:
    line = JsonFormatter().format(record("%s", message, subsystem_id=field, value=number))
    assert line.isascii() and len(line.splitlines()) == 1
    entry = json.loads(line)
    assert (entry["event"], entry["subsystem_id"]) == (message, field)
    assert entry["value"] == (number if math.isfinite(number) else str(number))


def test_json_format_escapes_a_traceback_too() -> None:
    line = JsonFormatter().format(record("failed", exc=True))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["exception"].endswith(f"ValueError: bad input\n{FORGED}\r")
