"""The health monitor: turns silence into state changes in the registry.

A subsystem whose process dies closes its TCP connection, so its Register stream ends
and the Register handler marks it stale at once. A hung process keeps the connection
open but stops answering pings; only this periodic sweep notices that. Stale
subsystems stay visible for the grace period (a restart usually re-registers within
it), then are removed.
"""

from __future__ import annotations

import asyncio
import logging

from flowwatch_gateway.registry.base import Expiry, Registry

log = logging.getLogger(__name__)

MISSED_HEARTBEATS_BEFORE_STALE = 2


class HealthMonitor:
    """Sweeps the registry every heartbeat/2 until cancelled."""

    def __init__(self, registry: Registry, *, heartbeat: float, grace_period: float) -> None:
        self._registry = registry
        self._heartbeat = heartbeat
        self._grace_period = grace_period

    @property
    def check_interval(self) -> float:
        return self._heartbeat / 2

    @property
    def stale_after(self) -> float:
        return self._heartbeat * MISSED_HEARTBEATS_BEFORE_STALE

    def sweep(self) -> Expiry:
        """Apply one round of timeouts and log what changed."""
        result = self._registry.expire(
            stale_after=self.stale_after, remove_after=self._grace_period
        )
        for instance in result.went_stale:
            log.info(
                "subsystem stale: id=%s name=%s endpoint=%s reason=no pong for %.1fs",
                instance.id,
                instance.name,
                instance.endpoint,
                self.stale_after,
                extra=instance.log_fields,
            )
        for instance in result.removed:
            log.info(
                "subsystem removed: id=%s name=%s endpoint=%s reason=stale for %.1fs",
                instance.id,
                instance.name,
                instance.endpoint,
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
