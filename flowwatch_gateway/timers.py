"""Loop callbacks instead of tasks: timers on a shared grid, and waking a waiter.

Under pyvoy a wake-up of the event loop costs more than most of what a timer then
does (a ping, a refused connect), so periodic work of many subsystems is rounded up
to the next multiple of a grid and runs in the same loop iteration. A plain future
resolved from such a callback (`wake`) is what a coroutine awaits instead of a
timeout that cancels it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

__all__ = ["call_on_grid", "wake"]


def call_on_grid(
    loop: asyncio.AbstractEventLoop,
    delay: float,
    grid: float,
    callback: Callable[..., object],
    *args: Any,
) -> asyncio.TimerHandle:
    """`loop.call_later(delay, ...)`, late by less than `grid`: at its next multiple."""
    return loop.call_at(math.ceil((loop.time() + delay) / grid) * grid, callback, *args)


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve `waiter` unless it is gone or settled already (a callback may fire late)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
