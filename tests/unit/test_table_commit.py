"""Reserve -> commit -> publish (SPEC §6.5): a placement the store refuses to make durable is aborted,
leaving nothing behind; adoption of held sessions a replica vetted, outside any recovery window."""

from __future__ import annotations

import pytest

from sessiond.core.errors import SessionNotFoundError
from sessiond.core.events import SessionEnded, SessionPlaced, WorkerGone
from sessiond.core.model import SessionRecord, SessionState
from sessiond.core.resources import SESSIONS
from sessiond.core.table import SessionTable
from tests.unit.support import (
    connect,
    create_placed,
    create_waiting,
    new_table,
    of_type,
    options,
    placed_for,
    registration,
)


def test_an_aborted_placement_frees_its_slot_owner_and_request_id_without_any_event() -> None:
    table = new_table()
    worker = connect(table, "w1", 1)
    table.take_events()
    session = create_placed(table, 1.0, owner="alice", request_id="r1")
    table.take_events()

    assert table.abort_placement(2.0, session.session_id) is session
    assert table.take_events() == []
    assert worker.used[SESSIONS] == 0 and not worker.sessions and table.open_count == 0
    with pytest.raises(SessionNotFoundError):
        table.get(session.session_id)
    # The owner may create again, and the request id is not answered with the aborted session.
    again = create_placed(table, 3.0, owner="alice", request_id="r1")
    assert again.session_id != session.session_id
    assert table.abort_placement(4.0, "unknown") is None


def test_the_freed_slot_goes_to_the_oldest_waiter() -> None:
    table = new_table()
    connect(table, "w1", 1)
    first = create_placed(table, 1.0)
    older = create_waiting(table, 2.0, options(creation=30.0))
    younger = create_waiting(table, 3.0, options(creation=30.0))
    table.take_events()

    table.abort_placement(4.0, first.session_id)
    events = table.take_events()
    served = placed_for(events, older)
    assert served.state is SessionState.OPEN and served.placed_at == 4.0
    assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [older.waiter_id]
    assert table.waiters() == [younger]


def test_a_placement_ended_before_its_commit_was_refused_is_only_forgotten() -> None:
    table = new_table()
    worker = connect(table, "w1", 2)
    session = create_placed(table, 1.0, owner="bob")
    table.take_events()
    table.disconnect_worker(2.0, worker.key, worker.epoch)  # the worker left before the store answered
    assert [e.session for e in of_type(table.take_events(), SessionEnded)] == [session]

    assert table.abort_placement(3.0, session.session_id) is session
    assert table.take_events() == []
    with pytest.raises(SessionNotFoundError):
        table.get(session.session_id)
    assert session not in table.sessions()[0]


def test_a_replica_adopts_the_held_sessions_it_vetted_outside_a_recovery_window() -> None:
    table: SessionTable = new_table()  # no recovery window: a plain start
    record = SessionRecord(session_id="s-1", task_queue="q", options=options(), owner="carol", request_id="",
                           recreated=False, placed_at=0.0, expire_at=1000.0)
    ignored = table.connect_worker(1.0, registration("w1", 2), [record])
    assert not ignored.sessions  # reports are ignored outside a window...
    table.disconnect_worker(2.0, ignored.key, ignored.epoch)
    worker = table.connect_worker(3.0, registration("w1", 2), [record], adopt_held=True)
    assert worker.sessions == {"s-1"}  # ... unless the caller vetted them (a takeover)
    assert table.get("s-1").owner == "carol"


def test_a_worker_taken_over_by_another_replica_leaves_silently_with_its_sessions() -> None:
    """Review i12b, 4: its sessions live on at the new owner. They are forgotten here without an event
    (no end, no detach), their activities are handed back to fail, and no waiter lands on the worker."""
    table = new_table()
    worker = connect(table, "w1", 2)
    kept = create_placed(table, 1.0, options(reattach=30.0), owner="alice", request_id="r1")
    other = create_placed(table, 1.0)
    activity = table.start_activity(2.0, kept.session_id, 60.0)
    waiting = create_waiting(table, 3.0, options(creation=30.0))
    table.take_events()

    sessions, activities = table.drop_worker(4.0, worker.key)
    assert sessions == [kept, other] and activities == [activity]
    assert table.take_events() == []  # nothing happened to the sessions: they moved
    for session in sessions:
        with pytest.raises(SessionNotFoundError):
            table.get(session.session_id)
    assert table.activity(activity.activity_id) is None
    assert table.waiters() == [waiting] and table.open_count == 0  # no waiter placed on the gone worker
    assert table.worker(worker.key, worker.epoch) is None
    table.disconnect_worker(5.0, worker.key, worker.epoch)  # its stream ending later changes nothing
    assert table.take_events() == []
    table.advance(100.0)  # and none of their deadlines fires
    assert all(not isinstance(e, SessionEnded) for e in table.take_events())
    # The owner and request id are free here (the new owner's store keys still guard them).
    assert create_waiting(table, 101.0, options(creation=30.0), owner="alice", request_id="r1") is not None
    assert table.drop_worker(102.0, worker.key) == ([], [])


def test_a_worker_is_gone_once_no_stream_and_no_detached_session_holds_it() -> None:
    """Review i12b, 5: replicas delete a gone worker's ownership keys, so the table says when that is:
    not while a detached session waits for it, not when a new stream replaces the old one, and not
    when it moved to another replica."""
    table = new_table()
    worker = connect(table, "w1", 2)
    session = create_placed(table, 1.0, options(reattach=30.0))
    table.take_events()
    table.disconnect_worker(2.0, worker.key, worker.epoch)
    assert of_type(table.take_events(), WorkerGone) == []  # its session waits for it
    table.advance(40.0)  # the reattach timeout passes: the session fails, nothing holds the worker
    events = table.take_events()
    assert [e.session for e in of_type(events, SessionEnded)] == [session]
    assert of_type(events, WorkerGone) == [WorkerGone(worker.key)]

    again = connect(table, "w1", 2, now=50.0)
    table.take_events()
    replacing = table.connect_worker(60.0, registration("w1", 2, instance=again.instance_id))
    assert of_type(table.take_events(), WorkerGone) == []  # replaced, not gone
    table.drop_worker(61.0, replacing.key)
    assert of_type(table.take_events(), WorkerGone) == []  # moved to another replica, not gone
    other = connect(table, "w2", 1, now=62.0)
    table.worker_goodbye(63.0, other.key, other.epoch, drain=False)
    table.disconnect_worker(63.0, other.key, other.epoch)
    assert of_type(table.take_events(), WorkerGone) == [WorkerGone(other.key)]
