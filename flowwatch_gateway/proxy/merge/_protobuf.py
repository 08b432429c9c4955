"""Protobuf time values as the merges need them: sortable keys and conversions."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

TimestampKey = tuple[int, int]


def timestamp_key(stamp: timestamp_pb2.Timestamp) -> TimestampKey:
    """A hashable, ordered key for a timestamp (bucket starts are matched by it)."""
    return (stamp.seconds, stamp.nanos)


def duration_of(nanoseconds: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(nanoseconds)
    return duration


def timestamp_of(moment: datetime) -> timestamp_pb2.Timestamp:
    """A naive datetime is taken as UTC."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def timestamp_from_ns(nanoseconds: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return stamp
