"""Activity heartbeat timeouts in the pure core, on a manual clock: exactly at the deadline, re-armed by
each heartbeat, start_to_close winning a tie, fencing of heartbeats from the wrong worker or epoch."""

from __future__ import annotations

import pytest

from sessiond.core.errors import ActivityHeartbeatTimeoutError, ActivityTimeoutError
from sessiond.core.events import ActivityEnded
from sessiond.core.model import Session, SessionState, Worker, WorkerKey
from sessiond.core.table import SessionTable
from tests.unit.support import before, connect, create_placed, new_table, of_type, options, state


def _open() -> tuple[SessionTable, Worker, Session]:
    table = new_table()
    worker = connect(table, "w", 2)
    session = create_placed(table, 0.0, options(heartbeat=10_000.0))
    table.take_events()
    return table, worker, session


def test_an_activity_silent_for_its_heartbeat_timeout_ends_exactly_at_the_deadline() -> None:
    table, _, session = _open()
    activity = table.start_activity(10.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    assert table.next_deadline() == 15.0

    table.advance(before(15.0))
    assert table.take_events() == []
    table.advance(15.0)

    [ended] = of_type(table.take_events(), ActivityEnded)
    assert ended.activity is activity
    assert isinstance(ended.error, ActivityHeartbeatTimeoutError)
    assert ended.error.reason == "ACTIVITY_HEARTBEAT_TIMEOUT"
    assert ended.error.metadata == {"session_id": session.session_id, "activity_id": activity.activity_id}
    assert session.activities == set()
    assert state(session) is SessionState.OPEN  # an activity timeout never touches the session


def test_each_heartbeat_moves_the_deadline_to_now_plus_the_timeout() -> None:
    table, worker, session = _open()
    activity = table.start_activity(0.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    for now in (4.0, 8.5, 13.0):
        assert table.activity_heartbeat(now, worker.key, worker.epoch, activity.activity_id, session.session_id) \
            is activity
        assert table.next_deadline() == now + 5.0
    table.advance(before(18.0))
    assert of_type(table.take_events(), ActivityEnded) == []
    table.advance(18.0)
    assert [type(e.error) for e in of_type(table.take_events(), ActivityEnded)] == [ActivityHeartbeatTimeoutError]


def test_start_to_close_still_bounds_an_activity_that_heartbeats_and_wins_a_tie() -> None:
    table, worker, session = _open()
    activity = table.start_activity(0.0, session.session_id, 12.0, heartbeat_timeout=4.0)
    for now in (4.0, 8.0):
        table.activity_heartbeat(now, worker.key, worker.epoch, activity.activity_id, session.session_id)
    assert table.next_deadline() == 12.0  # the heartbeat deadline (12.0) and start_to_close coincide
    table.advance(12.0)
    [ended] = of_type(table.take_events(), ActivityEnded)
    assert isinstance(ended.error, ActivityTimeoutError)


def test_without_a_heartbeat_timeout_heartbeats_are_accepted_and_change_no_deadline() -> None:
    table, worker, session = _open()
    activity = table.start_activity(0.0, session.session_id, 30.0)
    assert table.activity_heartbeat(20.0, worker.key, worker.epoch, activity.activity_id, session.session_id) \
        is activity
    assert table.next_deadline() == 30.0
    table.advance(before(30.0))
    assert table.take_events() == []


@pytest.mark.parametrize("wrong", ["activity", "session", "epoch", "worker"])
def test_a_heartbeat_for_an_activity_not_in_flight_on_that_connection_is_dropped(wrong: str) -> None:
    table, worker, session = _open()
    activity = table.start_activity(0.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    key, epoch, aid, sid = worker.key, worker.epoch, activity.activity_id, session.session_id
    if wrong == "activity":
        aid = "nope"
    elif wrong == "session":
        sid = "other"
    elif wrong == "epoch":
        epoch += 1
    else:
        key = WorkerKey(key.task_queue, "impostor")

    assert table.activity_heartbeat(4.0, key, epoch, aid, sid) is None
    assert table.next_deadline() == 5.0  # not re-armed


def test_a_finished_or_timed_out_activity_takes_no_more_heartbeats() -> None:
    table, worker, session = _open()
    done = table.start_activity(0.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    table.finish_activity(worker.key, worker.epoch, done.activity_id, session.session_id)
    assert table.activity_heartbeat(1.0, worker.key, worker.epoch, done.activity_id, session.session_id) is None
    silent = table.start_activity(0.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    table.advance(5.0)
    table.take_events()
    assert table.activity_heartbeat(6.0, worker.key, worker.epoch, silent.activity_id, session.session_id) is None
    assert table.next_deadline() != 11.0


def test_a_session_ending_aborts_its_heartbeating_activities_and_clears_their_deadlines() -> None:
    table, _, session = _open()
    table.start_activity(0.0, session.session_id, 300.0, heartbeat_timeout=5.0)
    table.complete(1.0, session.session_id)
    events = table.take_events()
    assert [e.error.reason for e in of_type(events, ActivityEnded)] == ["SESSION_COMPLETED"]
    table.advance(5.0)
    assert of_type(table.take_events(), ActivityEnded) == []
