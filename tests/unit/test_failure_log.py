"""The bounded log of recent failures behind the dashboard's timeline (manual clock)."""

from __future__ import annotations

import pytest

from sessiond.telemetry.failures import FailureLog, FailureRecord


def failure(at: float, cause: str = "WORKER_LOST", session_id: str = "s") -> FailureRecord:
    return FailureRecord(at, session_id, "q", "w1", "", cause, f"{cause} happened")


def test_the_latest_failures_come_newest_first_and_only_the_last_capacity_are_kept() -> None:
    log = FailureLog(capacity=3)
    for i in range(5):
        log.record(failure(float(i), session_id=f"s{i}"))

    assert [f.session_id for f in log.recent(10)] == ["s4", "s3", "s2"]
    assert [f.session_id for f in log.recent(2)] == ["s4", "s3"]
    assert log.totals == {"WORKER_LOST": 5}, "totals count every failure, not just the kept ones"


def test_the_timeline_counts_failures_by_cause_per_bucket_with_empty_buckets_filled_in() -> None:
    log = FailureLog(bucket_seconds=10.0, buckets=4)
    log.record(failure(0.0))
    log.record(failure(9.999, "HEARTBEAT_TIMEOUT"))
    log.record(failure(10.0))  # exactly at a boundary: the next bucket
    log.record(failure(31.0))
    log.record(failure(31.5))

    timeline = log.timeline(now=35.0)

    assert [(b.start, b.counts) for b in timeline] == [
        (0.0, {"WORKER_LOST": 1, "HEARTBEAT_TIMEOUT": 1}),
        (10.0, {"WORKER_LOST": 1}),
        (20.0, {}),
        (30.0, {"WORKER_LOST": 2}),
    ]


def test_old_buckets_leave_the_timeline_and_the_log_stays_bounded() -> None:
    log = FailureLog(capacity=5, bucket_seconds=1.0, buckets=3)
    for i in range(1000):
        log.record(failure(float(i)))

    timeline = log.timeline(now=1000.5)

    assert [(b.start, b.counts) for b in timeline] == [(998.0, {"WORKER_LOST": 1}), (999.0, {"WORKER_LOST": 1}),
                                                         (1000.0, {})]
    assert len(log._buckets) == 3 and len(log._recent) == 5


def test_a_quiet_log_has_an_empty_timeline_of_full_length() -> None:
    log = FailureLog(bucket_seconds=60.0, buckets=60)

    timeline = log.timeline(now=12_345.0)

    assert len(timeline) == 60 and all(b.counts == {} for b in timeline)
    assert timeline[-1].start <= 12_345.0 < timeline[-1].start + 60.0


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"buckets": 0}, {"bucket_seconds": 0.0}])
def test_a_log_needs_positive_sizes(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailureLog(**kwargs)  # type: ignore[arg-type]
