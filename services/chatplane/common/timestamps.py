"""Times and durations between Python and Protobuf (`google.protobuf.Timestamp`, `Duration`)
and the stored form of times (integer microseconds since the Unix epoch), in one leaf module
that imports nothing of chatplane, so that servicers, the store, the audit chain and the CLI
convert the same way. Datetimes are timezone-aware UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (the stored form of
    times: exact, ordered, and the same in every engine)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The UTC datetime `micros` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def timestamp_of(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of a datetime (a naive one is taken as UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def optional_timestamp_of(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp of a datetime, None for None (an unset message field)."""
    return None if moment is None else timestamp_of(moment)


def timestamp_of_ms(unix_ms: int) -> timestamp_pb2.Timestamp:
    """A Timestamp of milliseconds since the Unix epoch."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(unix_ms)
    return stamp


def timestamp_now() -> timestamp_pb2.Timestamp:
    """The current time as a Timestamp (nanosecond precision)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


def datetime_of(stamp: timestamp_pb2.Timestamp) -> datetime:
    """The UTC datetime of a Timestamp (ValueError or OverflowError when out of range)."""
    return stamp.ToDatetime(tzinfo=UTC)


def duration_of_seconds(seconds: float) -> duration_pb2.Duration:
    """A Duration of (fractional) seconds."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def seconds_of(duration: duration_pb2.Duration) -> float:
    """The (fractional) seconds of a Duration."""
    return float(duration.ToNanoseconds()) / 1e9
