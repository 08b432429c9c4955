"""The health monitor: turns silence into state changes in the registry.

A subsystem whose process dies closes its TCP connection, so its Register stream ends
and the Register handler marks it stale at once. A hung process keeps the connection
open but stops answering pings; only this periodic sweep notices that. Stale
subsystems stay visible for the grace period (a restart usually re-registers within
it), then are removed.

Self-preservation (Eureka's rule): when a large share of the subsystems goes stale
at once, the likelier cause is the gateway's own network, not that many services
died together. The monitor then removes nobody and keeps them listed as stale, says
so once, and resumes removals when most of them are back.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flowwatch_gateway.registry.base import (
    Clock,
    Expiry,
    Registry,
    SubsystemInstance,
    SystemClock,
)
from flowwatch_gateway.urls import redact_url

log = logging.getLogger(__name__)

MISSED_HEARTBEATS_BEFORE_STALE = 2
DEFAULT_SELF_PRESERVATION_THRESHOLD = 0.15
# Fewer subsystems than this going stale together never triggers self-preservation: in
# a deployment of three, one dead subsystem is a third of them and is simply dead.
SELF_PRESERVATION_MIN_STALE = 3


@dataclass
class SelfPreservation:
    """Decides when removals stop; `threshold` is a share of all subsystems (0 = never)."""

    threshold: float = DEFAULT_SELF_PRESERVATION_THRESHOLD
    minimum: int = SELF_PRESERVATION_MIN_STALE
    active: bool = False
    reason: str = ""

    def assess(self, instances: Sequence[SubsystemInstance], now: float, window: float) -> bool:
        """Update and return whether removals are suspended.

        Enters when more than `threshold` of the subsystems (and at least `minimum`)
        went stale within the last `window` seconds; leaves when no more than
        `threshold` of them are stale at all.
        """
        if self.threshold <= 0 or not instances:
            self.active = False
            return False
        stale = [inst for inst in instances if not inst.connected]
        if self.active:
            if len(stale) <= self.threshold * len(instances) or len(stale) < self.minimum:
                self.active, self.reason = False, ""
            return self.active
        recent = [
            inst
            for inst in stale
            if inst.stale_since_monotonic is not None and now - inst.stale_since_monotonic <= window
        ]
        if len(recent) >= self.minimum and len(recent) > self.threshold * len(instances):
            self.active = True
            self.reason = (
                f"{len(recent)} of {len(instances)} subsystems went stale within "
                f"{window:g}s; none is removed until most are back"
            )
        return self.active


class HealthMonitor:
    """Sweeps the registry every heartbeat/2 until cancelled."""

    def __init__(
        self,
        registry: Registry,
        *,
        heartbeat: float,
        grace_period: float,
        self_preservation: SelfPreservation | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`clock` must be the registry's, whose monotonic times mark stale subsystems."""
        self._registry = registry
        self._clock: Clock = clock or SystemClock()
        self._heartbeat = heartbeat
        self._grace_period = grace_period
        self.self_preservation = self_preservation or SelfPreservation()

    @property
    def check_interval(self) -> float:
        return self._heartbeat / 2

    @property
    def stale_after(self) -> float:
        return self._heartbeat * MISSED_HEARTBEATS_BEFORE_STALE

    def sweep(self) -> Expiry:
        """Apply one round of timeouts and log what changed."""
        guard = self.self_preservation
        was_active = guard.active
        now = self._clock.monotonic()
        suspended = guard.assess(self._registry.instances(), now, self.stale_after)
        if suspended and not was_active:
            log.warning("self-preservation on: %s", guard.reason)
        elif was_active and not suspended:
            log.warning("self-preservation off: removals resume")
        result = self._registry.expire(
            stale_after=self.stale_after,
            remove_after=math.inf if suspended else self._grace_period,
        )
        for instance in result.went_stale:
            log.info(
                "subsystem stale: id=%s name=%s endpoint=%s reason=no pong for %.1fs",
                instance.id,
                instance.name,
                redact_url(instance.endpoint),
                self.stale_after,
                extra=instance.log_fields,
            )
        for instance in result.removed:
            log.info(
                "subsystem removed: id=%s name=%s endpoint=%s reason=stale for %.1fs",
                instance.id,
                instance.name,
                redact_url(instance.endpoint),
                self._grace_period,
                extra=instance.log_fields,
            )
        return result

    async def run(self) -> None:
        """Sweep forever; one failing sweep is logged and does not stop the monitor."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                self.sweep()
            except Exception:
                log.exception("health sweep failed")
