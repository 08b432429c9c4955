"""Merging live stats snapshots from several subsystems into one."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from flowwatch_gateway.gen.flowwatch.v1 import stream_service_pb2 as stream


def merge_stats(snapshots: Iterable[stream.StatsSnapshot], now: datetime) -> stream.StatsSnapshot:
    """Counters and rates added; the error rate recomputed from the added last-minute counts.

    Error rate = failed / (succeeded + failed) over the last minute, 0 when nothing
    finished: a mean of the instances' rates would weigh a quiet instance like a
    busy one.
    """
    merged = stream.StatsSnapshot()
    merged.timestamp.FromDatetime(now)
    for snapshot in snapshots:
        merged.running += snapshot.running
        merged.succeeded_last_minute += snapshot.succeeded_last_minute
        merged.failed_last_minute += snapshot.failed_last_minute
        merged.paused += snapshot.paused
        merged.rate_per_minute += snapshot.rate_per_minute
    finished = merged.succeeded_last_minute + merged.failed_last_minute
    merged.error_rate = merged.failed_last_minute / finished if finished else 0.0
    return merged
