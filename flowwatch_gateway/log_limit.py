"""Log lines that clients can cause at will, bounded per source and in all.

A refused registration is worth a log line, but anyone who reaches the port can be
refused as often as they can open a stream, under as many claimed ids as they like.
`LogLimit` admits at most `per_source` such lines from one source (a peer address,
not anything the peer claims) and `total` from all sources in each window; the
first line it holds back in a window says so, and the end of that window brings one
summary line with how many were held back and who sent most. Quiet windows cost
nothing: no timer runs unless something was held back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

__all__ = ["LogLimit"]

# (delay in seconds, callback): by default the running loop's call_later.
Schedule = Callable[[float, Callable[[], None]], object]


class LogLimit:
    """Admits log lines per window: `per_source` per source, `total` in all."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        per_source: int,
        total: int,
        window_s: float,
        max_sources: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        """`what` names the lines in the notice and summary ("registration refusals")."""
        self._log = log
        self._what = what
        self._per_source = per_source
        self._total = total
        self._window_s = window_s
        self._max_sources = max_sources
        self._clock = clock
        self._schedule = schedule or _call_later
        self._window_start = clock()
        self._window = 0  # counts windows, so a summary timer knows whether it is still due
        # Only admitted sources are listed, so this holds at most `total` entries.
        self._admitted: dict[str, int] = {}
        self._admitted_total = 0
        # Held back, by source: at most `max_sources` listed, the rest only counted.
        self._held: dict[str, int] = {}
        self._held_total = 0

    def admit(self, source: str) -> bool:
        """Whether to log this line; if not, it is counted for the window's summary."""
        self._roll()
        count = self._admitted.get(source, 0)
        if count < self._per_source and self._admitted_total < self._total:
            self._admitted[source] = count + 1
            self._admitted_total += 1
            return True
        if self._held_total == 0:
            self._first_held()
        self._held_total += 1
        if source in self._held or len(self._held) < self._max_sources:
            self._held[source] = self._held.get(source, 0) + 1
        return False

    def flush(self, *, now: bool = False) -> None:
        """End the window if its time is up (or `now`: at shutdown), with its summary."""
        elapsed = self._clock() - self._window_start
        if elapsed < self._window_s and not now:
            return
        if self._held_total:
            top, top_count = max(self._held.items(), key=lambda item: item[1])
            sources = len(self._held)
            self._log.warning(
                "%s: %d not logged in the last %gs, from %s source(s); most from %s (%d)",
                self._what,
                self._held_total,
                round(min(elapsed, self._window_s), 1),
                sources if sources < self._max_sources else f"{sources}+",
                top,
                top_count,
                extra={"suppressed": self._held_total, "sources": sources},
            )
        self._window_start = self._clock()
        self._window += 1
        self._admitted.clear()
        self._admitted_total = 0
        self._held.clear()
        self._held_total = 0

    def _roll(self) -> None:
        if self._clock() - self._window_start >= self._window_s:
            self.flush()

    def _first_held(self) -> None:
        self._log.warning(
            "%s: more than %d from one source or %d in all within %gs; the rest of this "
            "window is counted and summarized, not logged",
            self._what,
            self._per_source,
            self._total,
            self._window_s,
        )
        self._schedule_summary()

    def _schedule_summary(self) -> None:
        window = self._window
        delay = self._window_start + self._window_s - self._clock()
        self._schedule(max(delay, 0.0), lambda: self._summary_timer(window))

    def _summary_timer(self, window: int) -> None:
        if window != self._window:
            return  # admit() ended that window already, with its summary
        if self._clock() - self._window_start < self._window_s:
            self._schedule_summary()  # fired a little early
            return
        self.flush()


def _call_later(delay: float, callback: Callable[[], None]) -> object:
    """On the running loop; without one the summary waits for the next admit()."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(delay, callback)
