"""Loop callbacks instead of tasks: timers on a shared grid, and waking a waiter.

Under pyvoy a wake-up of the event loop costs more than most of what a timer then
does (a ping, a refused connect), so periodic work of many subsystems is rounded up
to the next multiple of a grid and runs in the same loop iteration. Callbacks due at
one grid point share one loop timer: with 1,000 Register streams, a loop timer per
ping (scheduled and cancelled a thousand times a second) was about 5 % of the
gateway's Python samples while idle. A plain future resolved from such a callback
(`wake`) is what a coroutine awaits instead of a timeout that cancels it.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["GridTimer", "call_on_grid", "wake"]

# Per loop: grid point (loop time) -> the timers due there. Its one loop timer pops it.
_DUE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, list[GridTimer]]] = (
    weakref.WeakKeyDictionary()
)


class GridTimer:
    """One callback due at a grid point; `cancel()` drops it (it stays listed until then)."""

    __slots__ = ("_args", "_callback", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._callback = callback
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.cancelled:
            return
        try:
            self._callback(*self._args)
        except Exception as exc:  # one failing callback must not skip the others due with it
            loop.call_exception_handler(
                {"message": "exception in a grid timer callback", "exception": exc}
            )


def call_on_grid(
    loop: asyncio.AbstractEventLoop,
    delay: float,
    grid: float,
    callback: Callable[..., object],
    *args: Any,
) -> GridTimer:
    """`loop.call_later(delay, ...)`, late by less than `grid`: at its next multiple."""
    when = math.ceil((loop.time() + delay) / grid) * grid
    due_by_time = _DUE.get(loop)
    if due_by_time is None:
        due_by_time = _DUE[loop] = {}
    due = due_by_time.get(when)
    if due is None:
        due = due_by_time[when] = []
        loop.call_at(when, _run_due, loop, due_by_time, when)
    timer = GridTimer(callback, args)
    due.append(timer)
    return timer


def _run_due(
    loop: asyncio.AbstractEventLoop, due_by_time: dict[float, list[GridTimer]], when: float
) -> None:
    for timer in due_by_time.pop(when, ()):
        timer._run(loop)


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve `waiter` unless it is gone or settled already (a callback may fire late)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
