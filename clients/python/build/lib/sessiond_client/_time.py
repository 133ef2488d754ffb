"""Conversions between Python time values and protobuf Duration/Timestamp.

Durations are accepted as :class:`datetime.timedelta` or as float seconds everywhere in the
public API; this module is the one place that turns them into wire values and back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

#: A span of time: a :class:`~datetime.timedelta` or a number of seconds.
Duration = timedelta | float


def to_timedelta(value: Duration) -> timedelta:
    """Return ``value`` as a timedelta (numbers are seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a timedelta or seconds, got {type(value).__name__}")
    return timedelta(seconds=value)


def to_seconds(value: Duration) -> float:
    """Return ``value`` as float seconds."""
    return to_timedelta(value).total_seconds()


def duration_to_proto(value: Duration) -> duration_pb2.Duration:
    """Encode a duration. Negative values are sent as they are: the server names the field in its error."""
    out = duration_pb2.Duration()
    out.FromTimedelta(to_timedelta(value))
    return out


def duration_from_proto(value: duration_pb2.Duration) -> timedelta:
    """Decode a duration."""
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def timestamp_from_proto(value: timestamp_pb2.Timestamp) -> datetime:
    """Decode a timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(value.seconds, tz=UTC) + timedelta(microseconds=value.nanos // 1000)
