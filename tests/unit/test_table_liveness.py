"""Liveness: heartbeat and execution deadlines to the instant, heartbeat interval, fencing, staleness."""

from __future__ import annotations

import pytest

from sessiond.core.events import SessionEnded, SessionPlaced
from sessiond.core.model import FailureCause, Session, SessionState
from sessiond.core.table import STALE_INTERVALS
from tests.unit.support import before, connect, create_placed, new_table, of_type, options, registration, state


def _cause(session: Session) -> FailureCause | None:
    return None if session.failure is None else session.failure.cause


# ----------------------------------------------------------------- heartbeat timeout


@pytest.mark.parametrize(
    ("connected_at", "last_heartbeat", "placed_at", "deadline"),
    [
        pytest.param(0.0, None, 0.0, 20.0, id="never-spoke-placed-at-connect"),
        pytest.param(0.0, None, 7.0, 27.0, id="placed-after-silence-counts-from-placement"),
        pytest.param(0.0, 5.0, 9.0, 29.0, id="heartbeat-before-placement-counts-from-placement"),
        pytest.param(0.0, 15.0, 10.0, 35.0, id="heartbeat-after-placement-counts-from-heartbeat"),
    ],
)
def test_a_silent_worker_fails_its_session_exactly_heartbeat_timeout_after_the_later_of_last_seen_and_placement(
    connected_at: float, last_heartbeat: float | None, placed_at: float, deadline: float,
) -> None:
    table = new_table()
    worker = connect(table, "w", 1, now=connected_at)
    if last_heartbeat is not None and last_heartbeat < placed_at:
        table.worker_seen(last_heartbeat, worker.key, worker.epoch)
    session = create_placed(table, placed_at, options(heartbeat=20.0))
    if last_heartbeat is not None and last_heartbeat >= placed_at:
        table.worker_seen(last_heartbeat, worker.key, worker.epoch)
    table.take_events()
    table.advance(before(deadline))
    assert state(session) is SessionState.OPEN
    assert table.take_events() == []
    table.advance(deadline)
    assert state(session) is SessionState.FAILED
    assert _cause(session) is FailureCause.HEARTBEAT_TIMEOUT
    assert session.closed_at == deadline


def test_regular_heartbeats_keep_a_session_open_indefinitely() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=20.0))
    for tick in range(1, 100):
        now = tick * 19.0
        table.worker_seen(now, worker.key, worker.epoch)
        table.advance(now)
    assert state(session) is SessionState.OPEN
    table.advance(before(99 * 19.0 + 20.0))
    assert state(session) is SessionState.OPEN
    table.advance(99 * 19.0 + 20.0)
    assert _cause(session) is FailureCause.HEARTBEAT_TIMEOUT


def test_a_heartbeat_between_advances_pushes_the_deadline_out() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=20.0))
    table.worker_seen(before(20.0), worker.key, worker.epoch)
    table.advance(20.0)  # the original deadline: re-checked, the worker spoke, re-armed
    assert state(session) is SessionState.OPEN
    table.advance(before(before(20.0) + 20.0))
    assert state(session) is SessionState.OPEN
    table.advance(before(20.0) + 20.0)
    assert _cause(session) is FailureCause.HEARTBEAT_TIMEOUT


def test_each_session_on_a_silent_worker_fails_at_its_own_heartbeat_timeout() -> None:
    table = new_table()
    worker = connect(table, "w", 3)
    quick = create_placed(table, 0.0, options(heartbeat=10.0))
    slow = create_placed(table, 0.0, options(heartbeat=30.0))
    table.advance(10.0)
    assert _cause(quick) is FailureCause.HEARTBEAT_TIMEOUT
    assert state(slow) is SessionState.OPEN
    table.worker_seen(11.0, worker.key, worker.epoch)
    table.advance(before(41.0))
    assert state(slow) is SessionState.OPEN
    table.advance(41.0)
    assert _cause(slow) is FailureCause.HEARTBEAT_TIMEOUT


def test_a_late_advance_fails_every_overdue_session_in_one_call() -> None:
    table = new_table()
    connect(table, "w", 3)
    sessions = [create_placed(table, float(i), options(heartbeat=5.0)) for i in range(3)]
    table.take_events()
    table.advance(1000.0)
    assert all(_cause(s) is FailureCause.HEARTBEAT_TIMEOUT for s in sessions)
    assert [e.session for e in of_type(table.take_events(), SessionEnded)] == sessions


# ----------------------------------------------------------------- execution timeout


def test_execution_timeout_fails_a_healthy_session_exactly_at_expire_time() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 50.0, options(execution=100.0, heartbeat=20.0))
    assert session.expire_at == 150.0
    for now in range(60, 150, 10):
        table.worker_seen(float(now), worker.key, worker.epoch)
        table.advance(float(now))
    table.advance(before(150.0))
    assert state(session) is SessionState.OPEN
    table.advance(150.0)
    assert _cause(session) is FailureCause.EXECUTION_TIMEOUT
    assert session.closed_at == 150.0


def test_execution_timeout_shorter_than_heartbeat_timeout_wins() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(execution=5.0, heartbeat=20.0))
    table.advance(before(5.0))
    assert state(session) is SessionState.OPEN
    table.advance(5.0)
    assert _cause(session) is FailureCause.EXECUTION_TIMEOUT


def test_execution_timeout_wins_when_both_deadlines_coincide() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(execution=20.0, heartbeat=20.0))
    table.advance(20.0)
    assert _cause(session) is FailureCause.EXECUTION_TIMEOUT


# ----------------------------------------------------------------- no revival, fencing


def test_a_late_heartbeat_after_a_heartbeat_timeout_revives_nothing() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=10.0))
    table.advance(10.0)
    failure = session.failure
    table.take_events()
    assert table.worker_seen(11.0, worker.key, worker.epoch) is worker  # the stream itself is still current
    table.advance(100.0)
    assert state(session) is SessionState.FAILED and session.failure is failure
    assert not [e for e in table.take_events() if isinstance(e, SessionEnded | SessionPlaced) and e.session is session]
    assert session.session_id not in worker.sessions


def test_a_late_heartbeat_from_a_lost_stream_is_fenced() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table)
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    assert table.worker_seen(2.0, worker.key, worker.epoch) is None
    assert _cause(session) is FailureCause.WORKER_LOST


def test_after_a_reconnect_the_old_connection_is_fenced_and_cannot_touch_the_new_one() -> None:
    table = new_table()
    old = connect(table, "w", 2)
    lost = create_placed(table)
    new = table.connect_worker(5.0, registration("w", 2))
    assert new.epoch != old.epoch
    assert _cause(lost) is FailureCause.WORKER_LOST
    fresh = create_placed(table, 6.0)
    assert fresh.worker is new
    table.take_events()

    assert table.worker(old.key, old.epoch) is None
    assert table.worker_seen(7.0, old.key, old.epoch) is None
    table.worker_goodbye(8.0, old.key, old.epoch, drain=False)
    table.disconnect_worker(9.0, old.key, old.epoch)
    assert table.take_events() == []
    assert state(fresh) is SessionState.OPEN
    assert not new.draining and new.connected
    assert table.worker(new.key, new.epoch) is new


def test_a_disconnect_ends_only_that_worker_sessions() -> None:
    table = new_table()
    a = connect(table, "a", 1)
    connect(table, "b", 1)
    on_a = create_placed(table)
    on_b = create_placed(table)
    assert on_a.worker is a and on_b.worker is not a
    table.disconnect_worker(1.0, a.key, a.epoch)
    assert _cause(on_a) is FailureCause.WORKER_LOST
    assert state(on_b) is SessionState.OPEN
    assert table.open_count == 1


@pytest.mark.parametrize(
    ("drain", "open_after_goodbye"),
    [pytest.param(False, False, id="no-drain-fails-at-once"), pytest.param(True, True, id="drain-keeps-open")],
)
def test_goodbye_fails_open_sessions_only_without_drain(drain: bool, open_after_goodbye: bool) -> None:
    table = new_table()
    worker = connect(table, "w", 2)
    sessions = [create_placed(table), create_placed(table)]
    table.worker_goodbye(1.0, worker.key, worker.epoch, drain=drain)
    assert worker.draining
    assert all((state(s) is SessionState.OPEN) is open_after_goodbye for s in sessions)
    table.disconnect_worker(2.0, worker.key, worker.epoch)
    assert all(_cause(s) is FailureCause.WORKER_SHUTDOWN for s in sessions)


# ----------------------------------------------------------------- heartbeat interval


@pytest.mark.parametrize(
    ("max_interval", "heartbeat_timeouts", "interval"),
    [
        pytest.param(10.0, [], 10.0, id="idle-gets-the-max"),
        pytest.param(10.0, [60.0], 10.0, id="long-timeout-capped-at-max"),
        pytest.param(10.0, [30.0], 10.0, id="a-third-equal-to-max"),
        pytest.param(10.0, [15.0], 5.0, id="a-third-of-the-timeout"),
        pytest.param(10.0, [60.0, 9.0, 15.0], 3.0, id="the-smallest-timeout-wins"),
        pytest.param(2.0, [15.0], 2.0, id="configured-max"),
    ],
)
def test_heartbeat_interval_is_a_third_of_the_smallest_open_heartbeat_timeout_at_most_the_max(
    max_interval: float, heartbeat_timeouts: list[float], interval: float,
) -> None:
    table = new_table(max_heartbeat_interval=max_interval)
    worker = connect(table, "w", 5)
    assert worker.interval == max_interval
    for timeout in heartbeat_timeouts:
        create_placed(table, 0.0, options(heartbeat=timeout))
    assert worker.interval == interval


def test_heartbeat_interval_widens_as_short_timeout_sessions_end_and_returns_to_max() -> None:
    table = new_table()
    worker = connect(table, "w", 5)
    short = create_placed(table, 0.0, options(heartbeat=6.0))
    short_twin = create_placed(table, 0.0, options(heartbeat=6.0))
    medium = create_placed(table, 0.0, options(heartbeat=12.0))
    assert worker.interval == 2.0
    table.complete(1.0, short.session_id)
    assert worker.interval == 2.0  # another session still uses 6 s
    table.complete(1.0, short_twin.session_id)
    assert worker.interval == 4.0
    table.complete(1.0, medium.session_id)
    assert worker.interval == 10.0


def test_a_reconnected_worker_starts_again_at_the_max_interval() -> None:
    table = new_table()
    connect(table, "w", 1)
    create_placed(table, 0.0, options(heartbeat=3.0))
    again = table.connect_worker(0.5, registration("w", 1))
    assert again.interval == 10.0


# ----------------------------------------------------------------- staleness


def test_a_worker_becomes_suspect_exactly_after_stale_intervals_of_silence() -> None:
    table = new_table(max_heartbeat_interval=10.0)
    worker = connect(table, "w", 1, now=5.0)
    stale_at = 5.0 + STALE_INTERVALS * 10.0
    assert table.next_deadline() == stale_at
    table.advance(before(stale_at))
    assert not worker.suspect
    table.advance(stale_at)
    assert worker.suspect
    assert worker.connected


def test_heartbeats_keep_a_worker_from_becoming_suspect() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    for tick in range(1, 20):
        table.worker_seen(tick * 25.0, worker.key, worker.epoch)
        table.advance(tick * 25.0)
    assert not worker.suspect
    table.advance(19 * 25.0 + 30.0)
    assert worker.suspect


def test_a_shorter_interval_shortens_the_stale_window() -> None:
    table = new_table()
    worker = connect(table, "w", 2)
    create_placed(table, 0.0, options(heartbeat=6.0))  # interval 2 s, stale after 6 s
    table.advance(before(6.0))
    assert not worker.suspect
    table.advance(6.0)
    assert worker.suspect


def test_an_idle_worker_is_judged_by_a_new_shorter_interval_only_from_when_it_was_set() -> None:
    # Idle and compliant under the 10 s interval; a 6 s heartbeat_timeout session shrinks it to 2 s at 25.
    table = new_table()
    worker = connect(table, "w", 2)
    create_placed(table, 25.0, options(heartbeat=6.0))
    assert worker.interval == 2.0
    table.advance(before(25.0 + STALE_INTERVALS * 2.0))
    assert not worker.suspect
    assert create_placed(table, 26.0).worker is worker
    table.advance(25.0 + STALE_INTERVALS * 2.0)
    assert worker.suspect


def test_speaking_again_clears_suspicion_and_restarts_the_stale_window() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    table.advance(30.0)
    assert worker.suspect
    table.worker_seen(40.0, worker.key, worker.epoch)
    assert not worker.suspect and worker.eligible
    table.advance(before(70.0))
    assert not worker.suspect
    table.advance(70.0)
    assert worker.suspect


def test_next_deadline_is_the_earliest_pending_deadline() -> None:
    table = new_table()
    assert table.next_deadline() is None
    connect(table, "w", 1)  # stale check at 30
    assert table.next_deadline() == 30.0
    create_placed(table, 0.0, options(heartbeat=9.0))  # heartbeat deadline 9, stale check pulled to 9
    assert table.next_deadline() == 9.0


# ----------------------------------------------------------------- liveness groups


def test_a_silent_workers_sessions_fail_in_placement_order_each_at_its_own_deadline() -> None:
    table = new_table()
    worker = connect(table, "w", 10)
    early = create_placed(table, 0.0, options(heartbeat=6.0))
    table.worker_seen(1.0, worker.key, worker.epoch)  # last heard at 1.0
    later = create_placed(table, 3.0, options(heartbeat=6.0))  # placed after the last heartbeat
    other = create_placed(table, 3.0, options(heartbeat=9.0))  # another group

    table.advance(before(7.0))
    assert [state(s) for s in (early, later, other)] == [SessionState.OPEN] * 3
    table.advance(7.0)  # 1.0 + 6: sessions placed before the last heartbeat
    assert [state(s) for s in (early, later, other)] == [SessionState.FAILED, SessionState.OPEN, SessionState.OPEN]
    table.advance(before(9.0))
    assert state(later) is SessionState.OPEN
    table.advance(9.0)  # 3.0 + 6: placed after it, so counted from placement
    assert state(later) is SessionState.FAILED and state(other) is SessionState.OPEN
    table.advance(12.0)  # 3.0 + 9
    assert state(other) is SessionState.FAILED


def test_liveness_costs_one_deadline_per_worker_and_timeout_not_per_session() -> None:
    table = new_table()
    workers = [connect(table, f"w{i}", 100) for i in range(3)]
    for i in range(300):
        create_placed(table, 0.0, options(heartbeat=6.0 if i % 2 else 9.0))
    assert len(table._liveness_deadlines) == 3 * 2
    # Heartbeats re-arm nothing per session: only groups that come due are looked at.
    for now in range(1, 60):
        for worker in workers:
            table.worker_seen(float(now), worker.key, worker.epoch)
        table.advance(float(now))
    assert table.open_count == 300 and len(table._liveness_deadlines) == 6
