"""Activities: start only in OPEN sessions, abort on session end, time out to the instant, fencing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sessiond.core.errors import (
    ActivityAbortedError,
    ActivityTimeoutError,
    SessionClosedError,
    SessionFailedError,
    SessionNotFoundError,
)
from sessiond.core.events import ActivityEnded
from sessiond.core.model import FailureCause, Session, SessionState, Worker, WorkerKey
from sessiond.core.table import SessionTable
from tests.unit.support import before, connect, create_placed, new_table, of_type, options, registration, state


def _open(retention: float = 600.0) -> tuple[SessionTable, Worker, Session]:
    table = new_table(retention=retention)
    worker = connect(table, "w", 2)
    session = create_placed(table, 0.0, options(heartbeat=1000.0))
    table.take_events()
    return table, worker, session


def test_an_activity_starts_in_an_open_session_on_its_worker() -> None:
    table, worker, session = _open()
    activity = table.start_activity(10.0, session.session_id, 30.0)
    assert activity.session_id == session.session_id
    assert activity.worker is worker and activity.epoch == worker.epoch
    assert activity.deadline == 40.0
    assert session.activities == {activity.activity_id}
    assert table.take_events() == []


def test_a_finished_activity_is_returned_once_and_leaves_the_session() -> None:
    table, worker, session = _open()
    activity = table.start_activity(1.0, session.session_id, 30.0)
    assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is activity
    assert session.activities == set()
    assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is None
    table.advance(100.0)
    assert of_type(table.take_events(), ActivityEnded) == []
    assert state(session) is SessionState.OPEN


Fail = Callable[[SessionTable, Worker, Session], None]

FAILURES: list[tuple[Fail, FailureCause]] = [
    (lambda t, w, s: t.disconnect_worker(5.0, w.key, w.epoch), FailureCause.WORKER_LOST),
    (lambda t, w, s: t.advance(1000.0), FailureCause.HEARTBEAT_TIMEOUT),
    (lambda t, w, s: t.worker_goodbye(5.0, w.key, w.epoch, drain=False), FailureCause.WORKER_SHUTDOWN),
]
FAILURE_IDS = [cause.name for _, cause in FAILURES]


@pytest.mark.parametrize(("fail", "cause"), FAILURES, ids=FAILURE_IDS)
def test_a_new_activity_in_a_failed_session_is_refused_with_the_cause(fail: Fail, cause: FailureCause) -> None:
    table, worker, session = _open()
    fail(table, worker, session)
    with pytest.raises(SessionFailedError) as caught:
        table.start_activity(2000.0, session.session_id, 30.0)
    assert caught.value.cause is cause
    assert caught.value.reason == "SESSION_FAILED"
    assert caught.value.metadata == {"session_id": session.session_id, "cause": cause.name}


def test_a_new_activity_in_a_session_failed_by_execution_timeout_is_refused_with_that_cause() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(execution=5.0, heartbeat=100.0))
    table.advance(5.0)
    with pytest.raises(SessionFailedError) as caught:
        table.start_activity(6.0, session.session_id, 30.0)
    assert caught.value.cause is FailureCause.EXECUTION_TIMEOUT


def test_a_new_activity_in_a_closed_session_is_refused() -> None:
    table, _, session = _open()
    table.complete(1.0, session.session_id)
    with pytest.raises(SessionClosedError) as caught:
        table.start_activity(2.0, session.session_id, 30.0)
    assert caught.value.reason == "SESSION_CLOSED"


def test_a_new_activity_in_an_unknown_or_forgotten_session_is_not_found() -> None:
    table, _, session = _open(retention=10.0)
    with pytest.raises(SessionNotFoundError):
        table.start_activity(1.0, "nope", 30.0)
    table.complete(1.0, session.session_id)
    table.advance(11.0)
    with pytest.raises(SessionNotFoundError):
        table.start_activity(12.0, session.session_id, 30.0)


@pytest.mark.parametrize(("fail", "cause"), FAILURES, ids=FAILURE_IDS)
def test_activities_in_flight_abort_with_session_failed_when_the_session_fails(fail: Fail,
                                                                              cause: FailureCause) -> None:
    table, worker, session = _open()
    running = [table.start_activity(1.0, session.session_id, 5000.0) for _ in range(3)]
    fail(table, worker, session)
    ended = of_type(table.take_events(), ActivityEnded)
    assert sorted(e.activity.activity_id for e in ended) == sorted(a.activity_id for a in running)
    for event in ended:
        assert isinstance(event.error, ActivityAbortedError)
        assert event.error.reason == "SESSION_FAILED"
        assert event.error.cause is cause
    assert session.activities == set()
    for activity in running:
        assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is None


def test_activities_in_flight_abort_with_session_completed_when_the_session_is_completed() -> None:
    table, worker, session = _open()
    activity = table.start_activity(1.0, session.session_id, 30.0)
    table.complete(2.0, session.session_id)
    (ended,) = of_type(table.take_events(), ActivityEnded)
    assert ended.activity is activity
    assert isinstance(ended.error, ActivityAbortedError)
    assert ended.error.reason == "SESSION_COMPLETED"
    assert ended.error.cause is None
    assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is None
    table.advance(100.0)
    assert of_type(table.take_events(), ActivityEnded) == []


def test_an_activity_times_out_exactly_at_its_start_to_close_timeout_and_the_session_stays_open() -> None:
    table, worker, session = _open()
    activity = table.start_activity(10.0, session.session_id, 7.5)
    table.advance(before(17.5))
    assert table.take_events() == []
    table.advance(17.5)
    (ended,) = of_type(table.take_events(), ActivityEnded)
    assert ended.activity is activity
    assert isinstance(ended.error, ActivityTimeoutError)
    assert ended.error.reason == "ACTIVITY_TIMEOUT"
    assert state(session) is SessionState.OPEN
    assert session.activities == set()
    assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is None


def test_an_activity_due_when_its_session_fails_ends_once_as_aborted() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=10.0))
    table.start_activity(0.0, session.session_id, 10.0)
    table.take_events()
    table.advance(10.0)
    (ended,) = of_type(table.take_events(), ActivityEnded)
    assert isinstance(ended.error, ActivityAbortedError)
    assert ended.error.cause is FailureCause.HEARTBEAT_TIMEOUT


@pytest.mark.parametrize(
    "report",
    [
        pytest.param(lambda w, a: (w.key, w.epoch + 1000, a.activity_id, a.session_id), id="other-epoch"),
        pytest.param(lambda w, a: (WorkerKey("q", "someone-else"), w.epoch, a.activity_id, a.session_id),
                     id="other-worker"),
        pytest.param(lambda w, a: (w.key, w.epoch, a.activity_id, "other-session"), id="other-session"),
        pytest.param(lambda w, a: (w.key, w.epoch, "unknown-activity", a.session_id), id="unknown-activity"),
    ],
)
def test_an_outcome_that_does_not_match_the_activity_in_flight_is_dropped(
    report: Callable[..., tuple[WorkerKey, int, str, str]],
) -> None:
    table, worker, session = _open()
    activity = table.start_activity(1.0, session.session_id, 30.0)
    assert table.finish_activity(*report(worker, activity)) is None
    assert session.activities == {activity.activity_id}


def test_an_outcome_from_a_fenced_connection_is_dropped_after_a_reconnect() -> None:
    table, old, session = _open()
    activity = table.start_activity(1.0, session.session_id, 30.0)
    new = table.connect_worker(2.0, registration("w", 2))
    assert table.finish_activity(old.key, old.epoch, activity.activity_id, session.session_id) is None
    assert table.finish_activity(new.key, new.epoch, activity.activity_id, session.session_id) is None


def test_an_abandoned_activity_is_forgotten_and_never_times_out() -> None:
    table, worker, session = _open()
    activity = table.start_activity(1.0, session.session_id, 5.0)
    assert table.abandon_activity(activity.activity_id) is activity
    assert table.abandon_activity(activity.activity_id) is None
    assert session.activities == set()
    table.advance(100.0)
    assert of_type(table.take_events(), ActivityEnded) == []
    assert table.finish_activity(worker.key, worker.epoch, activity.activity_id, session.session_id) is None
