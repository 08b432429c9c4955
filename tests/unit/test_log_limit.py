"""LogLimit: lines a client can cause, bounded per source and in all, with a summary.

With an injected clock and timer, so windows end when the test says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from flowwatch_gateway.log_limit import LogLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """Records what LogLimit schedules; `run_due` runs what the clock has reached."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.pending.append((self.clock.now + delay, callback))

    def run_due(self) -> None:
        due = [entry for entry in self.pending if entry[0] <= self.clock.now]
        self.pending = [entry for entry in self.pending if entry[0] > self.clock.now]
        for _, callback in due:
            callback()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limit(clock: Clock, timers: Timers, **overrides: int) -> LogLimit:
    settings = {"per_source": 3, "total": 5, "max_sources": 1024, **overrides}
    return LogLimit(
        logging.getLogger("tests.limit"),
        "refusals",
        window_s=60.0,
        clock=clock,
        schedule=timers,
        **settings,
    )


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "tests.limit"]
    caplog.clear()
    return lines


def test_per_source_then_in_all_then_one_notice_and_one_summary(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.limit")
    timers = Timers(clock)
    refusals = limit(clock, timers)
    # One source: 3 admitted, the rest held back whatever else it claims.
    assert [refusals.admit("10.0.0.1") for _ in range(200)] == [True] * 3 + [False] * 197
    notice = messages(caplog)
    assert len(notice) == 1 and "more than 3 from one source or 5 in all within 60s" in notice[0]
    # Others still get their share, until 5 in all.
    assert [refusals.admit(peer) for peer in ("10.0.0.2", "10.0.0.3", "10.0.0.4")] == [
        True,
        True,
        False,
    ]
    assert messages(caplog) == []  # the notice comes once a window
    clock.now += 59.0
    timers.run_due()
    assert messages(caplog) == []  # not before the window ends
    clock.now += 1.0
    timers.run_due()
    assert messages(caplog) == [
        "refusals: 198 not logged in the last 60s, from 2 source(s); most from 10.0.0.1 (197)"
    ]
    assert timers.pending == []
    # A new window: everyone's share is back, and a quiet window logs nothing.
    assert refusals.admit("10.0.0.1")
    clock.now += 120.0
    timers.run_due()
    assert messages(caplog) == []


def test_the_summary_also_comes_from_the_next_line_when_no_timer_runs(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.limit")
    timers = Timers(clock)
    refusals = limit(clock, timers, per_source=1)
    assert [refusals.admit("a") for _ in range(3)] == [True, False, False]
    messages(caplog)
    clock.now += 61.0
    assert refusals.admit("a")  # ends the old window first, with its summary
    assert messages(caplog) == [
        "refusals: 2 not logged in the last 60s, from 1 source(s); most from a (2)"
    ]
    timers.run_due()  # the old window's timer finds its summary already written
    assert messages(caplog) == []


def test_an_early_timer_waits_for_the_end_of_its_window(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.limit")
    timers = Timers(clock)
    refusals = limit(clock, timers, per_source=0)
    assert not refusals.admit("a")
    messages(caplog)
    ((when, callback),) = timers.pending
    timers.pending.clear()
    clock.now = when - 0.001
    callback()
    assert messages(caplog) == [] and len(timers.pending) == 1
    clock.now = timers.pending[0][0]
    timers.run_due()
    assert len(messages(caplog)) == 1


def test_held_back_sources_are_remembered_up_to_a_bound(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.limit")
    timers = Timers(clock)
    refusals = limit(clock, timers, per_source=0, max_sources=10)
    for index in range(1000):
        refusals.admit(f"10.0.{index // 256}.{index % 256}")
    refusals.admit("10.0.0.0")
    clock.now += 60.0
    timers.run_due()
    summary = messages(caplog)[-1]
    assert summary.startswith("refusals: 1001 not logged in the last 60s, from 10+ source(s)")
    assert summary.endswith("most from 10.0.0.0 (2)")


def test_at_shutdown_the_summary_comes_at_once(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tests.limit")
    timers = Timers(clock)
    refusals = limit(clock, timers, per_source=1)
    refusals.flush(now=True)
    assert messages(caplog) == []  # nothing held back: nothing to say
    assert [refusals.admit("a") for _ in range(4)] == [True, False, False, False]
    messages(caplog)
    clock.now += 12.0
    refusals.flush(now=True)
    assert messages(caplog) == [
        "refusals: 3 not logged in the last 12s, from 1 source(s); most from a (3)"
    ]
    timers.run_due()
    assert messages(caplog) == []
