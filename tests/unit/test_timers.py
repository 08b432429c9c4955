"""Grid timers: due at a multiple of the grid, one loop timer per grid point."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from flowwatch_gateway.timers import call_on_grid, wake

GRID = 0.05


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def count_loop_timers(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> list[float]:
    """The times of the loop timers asked for from now on."""
    asked: list[float] = []
    original = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        asked.append(when)
        return original(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", call_at)
    return asked


def run_for(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def test_callbacks_run_at_the_next_grid_point_after_their_delay(
    loop: asyncio.AbstractEventLoop,
) -> None:
    fired: list[tuple[str, float]] = []
    start = loop.time()
    for name, delay in (("a", 0.01), ("b", 0.07), ("c", 0.12)):
        call_on_grid(loop, delay, GRID, lambda n=name: fired.append((n, loop.time())))
    run_for(loop, 0.3)
    assert [name for name, _ in fired] == ["a", "b", "c"]
    for (_, at), delay in zip(fired, (0.01, 0.07, 0.12), strict=True):
        point = math.ceil((start + delay) / GRID) * GRID
        assert at >= point >= start + delay
        assert point - (start + delay) < GRID


def test_callbacks_due_at_one_grid_point_share_one_loop_timer(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = count_loop_timers(loop, monkeypatch)
    fired: list[int] = []
    # Anchored just after a grid point, so every delay below rounds up to the same one.
    anchor = math.ceil(loop.time() / GRID) * GRID
    run_for(loop, max(0.0, anchor - loop.time()) + 0.001)
    asked.clear()
    for number in range(100):
        call_on_grid(loop, GRID / 2 + number * 1e-5, GRID, fired.append, number)
    assert len(asked) == 1
    run_for(loop, 2 * GRID)
    assert fired == list(range(100))


def test_a_cancelled_callback_does_not_run_and_the_others_do(
    loop: asyncio.AbstractEventLoop,
) -> None:
    fired: list[str] = []
    kept = call_on_grid(loop, 0.01, GRID, fired.append, "kept")
    dropped = call_on_grid(loop, 0.01, GRID, fired.append, "dropped")
    dropped.cancel()
    run_for(loop, 2 * GRID)
    assert fired == ["kept"]
    assert not kept.cancelled


def test_a_failing_callback_is_reported_and_does_not_stop_the_others(
    loop: asyncio.AbstractEventLoop,
) -> None:
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    fired: list[str] = []

    def fail() -> None:
        raise RuntimeError("boom")

    call_on_grid(loop, 0.01, GRID, fail)
    call_on_grid(loop, 0.01, GRID, fired.append, "after")
    run_for(loop, 2 * GRID)
    assert fired == ["after"]
    assert [str(context["exception"]) for context in reported] == ["boom"]


def test_a_callback_can_schedule_the_next_one(loop: asyncio.AbstractEventLoop) -> None:
    fired: list[int] = []

    def again(count: int) -> None:
        fired.append(count)
        if count < 3:
            call_on_grid(loop, 0.001, GRID, again, count + 1)

    call_on_grid(loop, 0.001, GRID, again, 1)
    run_for(loop, 6 * GRID)
    assert fired == [1, 2, 3]


def test_wake_settles_a_waiter_once_and_ignores_a_missing_one(
    loop: asyncio.AbstractEventLoop,
) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    wake(waiter)
    wake(waiter)  # a late second callback: no InvalidStateError
    wake(None)
    assert waiter.done() and waiter.result() is None
