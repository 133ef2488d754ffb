"""Sessions that outlive processes (SPEC §6.2, last item of §6.1), on a manual clock.

Caller liveness (caller_timeout, CALLER_LOST), worker reattach (reattach_timeout, detached
sessions, WORKER_DETACHED), adoption of reported sessions by a restarted table (recovery window,
RECOVERING), and one live process per worker_id (WORKER_ID_IN_USE).
"""

from __future__ import annotations

import pytest

from sessiond.core.errors import (
    ExistingOpenSessionError,
    NoCapacityError,
    RecoveringError,
    SessionNotFoundError,
    WorkerDetachedError,
    WorkerIdInUseError,
)
from sessiond.core.events import ActivityEnded, SessionDetached, SessionEnded, SessionPlaced, WorkerRegistered
from sessiond.core.model import FailureCause, Session, SessionRecord, SessionState
from sessiond.core.table import SessionTable
from tests.unit.support import (
    QUEUE,
    SIGNER,
    before,
    connect,
    counting_ids,
    create_placed,
    create_waiting,
    new_table,
    of_type,
    options,
    placed_for,
    registration,
    state,
    token_for,
)


def _failure(session: Session) -> FailureCause | None:
    return None if session.failure is None else session.failure.cause


# --------------------------------------------------------------------- caller liveness


def test_an_unattended_session_fails_caller_lost_exactly_at_its_caller_timeout_and_frees_its_slot() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(caller=10.0, heartbeat=1e6))
    waiter = create_waiting(table, 1.0, options(creation=60.0))
    table.take_events()
    table.advance(before(10.0))
    assert state(session) is SessionState.OPEN
    table.advance(10.0)
    assert state(session) is SessionState.FAILED and _failure(session) is FailureCause.CALLER_LOST
    # The slot went to the next caller at once.
    assert placed_for(table.take_events(), waiter).worker.key.worker_id == "w"


def test_every_rpc_on_the_session_restarts_its_caller_timeout() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(caller=10.0, heartbeat=1e6))
    table.lookup(8.0, session.session_id)
    table.advance(17.0)
    assert state(session) is SessionState.OPEN
    table.advance(18.0)
    assert _failure(session) is FailureCause.CALLER_LOST


def test_an_open_watch_attends_the_session_and_the_timeout_counts_from_when_it_ends() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(caller=10.0, heartbeat=1e6))
    table.watch_started(1.0, session.session_id)
    for now in (10.0, 50.0, 500.0):
        table.advance(now)
    assert state(session) is SessionState.OPEN
    table.watch_ended(505.0, session)
    table.advance(before(515.0))
    assert state(session) is SessionState.OPEN
    table.advance(515.0)
    assert _failure(session) is FailureCause.CALLER_LOST


def test_an_activity_in_flight_attends_the_session() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(caller=10.0, heartbeat=1e6))
    activity = table.start_activity(1.0, session.session_id, 300.0)
    table.advance(100.0)
    assert state(session) is SessionState.OPEN
    table.finish_activity(activity.worker.key, activity.epoch, activity.activity_id, session.session_id)
    table.caller_seen(120.0, session.session_id)  # the engine does this when the RPC returns
    table.advance(before(130.0))
    assert state(session) is SessionState.OPEN
    table.advance(130.0)
    assert _failure(session) is FailureCause.CALLER_LOST


def test_without_a_caller_timeout_an_unattended_session_stays_open() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(execution=10_000.0, heartbeat=1e6))
    table.advance(5_000.0)
    assert state(session) is SessionState.OPEN


# --------------------------------------------------------------------- worker reattach


def test_a_lost_worker_detaches_sessions_with_a_reattach_timeout_and_fails_the_others() -> None:
    table = new_table()
    worker = connect(table, "w", 3)
    keeps = create_placed(table, 0.0, options(reattach=10.0))
    lost = create_placed(table, 0.0, options())
    running = table.start_activity(1.0, keeps.session_id, 60.0)
    table.take_events()
    table.disconnect_worker(2.0, worker.key, worker.epoch)
    events = table.take_events()
    assert state(keeps) is SessionState.OPEN and keeps.detached_at == 2.0
    assert [e.session for e in of_type(events, SessionDetached)] == [keeps]
    assert _failure(lost) is FailureCause.WORKER_LOST
    aborted = of_type(events, ActivityEnded)
    assert [e.activity for e in aborted] == [running] and isinstance(aborted[0].error, WorkerDetachedError)
    assert aborted[0].error.reason == "WORKER_DETACHED"
    assert table.open_count == 1


def test_a_detached_session_keeps_its_slot_so_the_limit_holds_across_the_restart() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    create_placed(table, 0.0, options(reattach=10.0))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    again = table.connect_worker(2.0, registration("w", 1, instance="new-process"))
    assert len(again.sessions) == 1
    with pytest.raises(NoCapacityError):
        table.create(3.0, QUEUE, options(creation=0.0))


def test_a_registration_with_the_same_worker_id_gets_its_detached_sessions_back_with_waiting_activities() -> None:
    table = new_table()
    worker = connect(table, "w", 3)
    first = create_placed(table, 0.0, options(reattach=10.0, heartbeat=1e6))
    second = create_placed(table, 0.5, options(reattach=10.0, heartbeat=1e6))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    waiting = table.start_activity(2.0, first.session_id, 30.0)
    assert not waiting.worker.connected  # it waits for the worker; the engine holds the task
    table.take_events()
    again = table.connect_worker(5.0, registration("w", 3, instance="new-process"))
    registered = of_type(table.take_events(), WorkerRegistered)
    assert [r.reattached for r in registered] == [(first, second)]
    assert first.worker is again and first.detached_at is None and again.sessions == {first.session_id,
                                                                                      second.session_id}
    assert (waiting.worker, waiting.epoch) == (again, again.epoch)
    assert table.finish_activity(again.key, again.epoch, waiting.activity_id, first.session_id) is waiting
    table.advance(100.0)
    assert state(first) is SessionState.OPEN  # no reattach deadline left behind


def test_a_detached_session_fails_worker_lost_exactly_at_its_reattach_timeout() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(reattach=10.0))
    table.disconnect_worker(3.0, worker.key, worker.epoch)
    table.advance(before(13.0))
    assert state(session) is SessionState.OPEN
    table.advance(13.0)
    assert _failure(session) is FailureCause.WORKER_LOST
    assert table.open_count == 0


def test_a_worker_that_comes_back_smaller_gets_back_only_what_fits() -> None:
    table = new_table()
    worker = connect(table, "w", 3)
    kept = [create_placed(table, float(i), options(reattach=10.0)) for i in range(3)]
    table.disconnect_worker(5.0, worker.key, worker.epoch)
    again = table.connect_worker(6.0, registration("w", 1, instance="new-process"))
    assert again.sessions == {kept[0].session_id}
    assert [_failure(s) for s in kept[1:]] == [FailureCause.WORKER_LOST] * 2


def test_a_declined_session_fails_worker_lost_and_frees_its_slot() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(reattach=10.0))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    again = table.connect_worker(2.0, registration("w", 1, instance="new-process"))
    table.decline_session(3.0, again.key, again.epoch, session.session_id)
    assert _failure(session) is FailureCause.WORKER_LOST
    create_placed(table, 4.0)


def test_a_goodbye_is_not_a_restart_its_sessions_do_not_detach() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(reattach=10.0))
    table.worker_goodbye(1.0, worker.key, worker.epoch, drain=True)
    table.disconnect_worker(2.0, worker.key, worker.epoch)
    assert _failure(session) is FailureCause.WORKER_SHUTDOWN


def test_a_recreate_for_the_detached_worker_waits_for_it_to_come_back() -> None:
    table = new_table()
    worker = connect(table, "w", 2)
    create_placed(table, 0.0, options(reattach=10.0))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    waiter = table.recreate(2.0, token_for(worker.key), options(creation=30.0))
    assert not isinstance(waiter, Session)
    table.take_events()
    table.connect_worker(3.0, registration("w", 2, instance="new-process"))
    assert placed_for(table.take_events(), waiter).worker.key == worker.key


# --------------------------------------------------------------------- one live process per worker_id


def test_a_second_process_is_refused_while_the_first_is_live_and_displaces_nothing() -> None:
    table = new_table(max_heartbeat_interval=10.0)
    first = table.connect_worker(0.0, registration("w", 1, instance="p1"))
    session = create_placed(table, 0.0)
    table.worker_seen(20.0, first.key, first.epoch)
    table.take_events()
    with pytest.raises(WorkerIdInUseError) as refused:
        table.connect_worker(25.0, registration("w", 1, instance="p2"))
    assert refused.value.reason == "WORKER_ID_IN_USE"
    assert refused.value.stale_after == pytest.approx(20.0 + 3 * first.interval - 25.0)
    assert table.worker(first.key, first.epoch) is first and state(session) is SessionState.OPEN
    assert table.take_events() == []


def test_a_stale_registration_is_replaced_by_another_process() -> None:
    table = new_table(max_heartbeat_interval=10.0)
    first = table.connect_worker(0.0, registration("w", 1, instance="p1"))
    stale_at = 3 * first.interval
    with pytest.raises(WorkerIdInUseError):
        table.connect_worker(before(stale_at), registration("w", 1, instance="p2"))
    second = table.connect_worker(stale_at, registration("w", 1, instance="p2"))
    assert table.worker(first.key, first.epoch) is None and table.worker(second.key, second.epoch) is second


def test_the_same_process_may_register_again_at_once() -> None:
    table = new_table()
    first = table.connect_worker(0.0, registration("w", 1, instance="p1"))
    second = table.connect_worker(0.1, registration("w", 1, instance="p1"))
    assert table.worker(first.key, first.epoch) is None and second.epoch > first.epoch


# --------------------------------------------------------------------- adoption after a restart


def _record(session: Session) -> SessionRecord:
    return SessionRecord(session.session_id, session.task_queue, session.options, session.owner, session.request_id,
                         session.recreated, session.placed_at, session.expire_at)


def _restarted(window: float, now: float) -> SessionTable:
    return SessionTable(new_id=counting_ids("new"), recovering_until=now + window, signer=SIGNER)


def test_a_restarted_table_adopts_what_a_worker_reports_with_ids_owners_request_ids_and_deadlines() -> None:
    old = new_table()
    connect(old, "w", 3)
    a = create_placed(old, 0.0, options(execution=100.0, heartbeat=1e6), owner="alice",
                     request_id="r1")
    b = old.recreate(1.0, token_for(a.worker.key), options(execution=50.0, heartbeat=1e6), request_id="r2")
    assert isinstance(b, Session)
    table = _restarted(30.0, 10.0)
    worker = table.connect_worker(10.0, registration("w", 3), [_record(a), _record(b)])
    registered = of_type(table.take_events(), WorkerRegistered)
    adopted = registered[0].reattached
    assert [s.session_id for s in adopted] == [a.session_id, b.session_id]
    assert worker.sessions == {a.session_id, b.session_id}
    got = table.lookup(11.0, a.session_id)
    assert (got.owner, got.request_id, got.expire_at, got.worker) == ("alice", "r1", 100.0, worker)
    # A retried create with the same request id gets the adopted session; the owner is taken.
    assert table.create(12.0, QUEUE, options(), request_id="r1") is got
    assert table.recreate(12.0, token_for(worker.key), options(), request_id="r2").session_id == b.session_id
    with pytest.raises(ExistingOpenSessionError):
        table.create(12.0, QUEUE, options(), owner="alice")
    # Deadlines carried over: b expires at 51, as before the restart.
    table.advance(51.0)
    assert _failure(table.get(b.session_id)) is FailureCause.EXECUTION_TIMEOUT
    assert state(got) is SessionState.OPEN


def test_unknown_ids_answer_recovering_during_the_window_and_not_found_after() -> None:
    table = _restarted(30.0, 0.0)
    with pytest.raises(RecoveringError):
        table.lookup(before(30.0), "gone")
    with pytest.raises(SessionNotFoundError):
        table.lookup(30.0, "gone")


def test_an_owner_that_created_again_during_the_window_keeps_its_new_session() -> None:
    old = new_table()
    connect(old, "w", 2)
    earlier = create_placed(old, 0.0, owner="alice")
    table = _restarted(30.0, 0.0)
    connect(table, "other", 1)
    newer = create_placed(table, 1.0, owner="alice")  # not held up by the recovery window
    worker = table.connect_worker(2.0, registration("w", 2), [_record(earlier)])
    assert worker.sessions == set()  # the report is refused: one OPEN session per owner
    with pytest.raises(RecoveringError):
        table.lookup(3.0, earlier.session_id)
    assert table.lookup(3.0, newer.session_id).owner == "alice"


def test_adoption_respects_the_hard_limit_and_ends_with_the_window() -> None:
    old = new_table()
    connect(old, "w", 2)
    sessions = [create_placed(old, 0.0) for _ in range(2)]
    table = _restarted(30.0, 0.0)
    worker = table.connect_worker(1.0, registration("w", 1), [_record(s) for s in sessions])
    assert worker.sessions == {sessions[0].session_id}
    late = _restarted(30.0, 0.0)
    worker = late.connect_worker(30.0, registration("w", 2), [_record(s) for s in sessions])
    assert worker.sessions == set()
    assert of_type(late.take_events(), WorkerRegistered)[0].reattached == ()


def test_a_reported_session_past_its_expiry_is_adopted_only_to_fail_execution_timeout() -> None:
    old = new_table()
    connect(old, "w", 1)
    session = create_placed(old, 0.0, options(execution=5.0))
    table = _restarted(30.0, 10.0)
    table.connect_worker(10.0, registration("w", 1), [_record(session)])
    ended = of_type(table.take_events(), SessionEnded)
    assert [e.session.session_id for e in ended] == [session.session_id]
    assert _failure(ended[0].session) is FailureCause.EXECUTION_TIMEOUT


def test_a_slot_freed_by_an_expired_report_goes_to_the_next_report_not_to_a_waiting_create() -> None:
    # The table's state machine once found this ("adopted [id-1], expected [id-1, id-3]"): ending
    # the expired report served the waiting Create on its slot in the middle of the registration,
    # so the session the worker really held was refused and had to be dropped.
    old = new_table()
    connect(old, "w", 2)
    expiring = create_placed(old, 0.0, options(execution=5.0))
    keeps = create_placed(old, 0.0, options(execution=100.0))
    table = _restarted(30.0, 0.0)
    create_waiting(table, 1.0)
    worker = table.connect_worker(5.0, registration("w", 1), [_record(expiring), _record(keeps)])
    events = table.take_events()
    registered = of_type(events, WorkerRegistered)[0]
    assert [s.session_id for s in registered.adopted] == [expiring.session_id, keeps.session_id]
    assert worker.sessions == {keeps.session_id}
    assert _failure(table.get(expiring.session_id)) is FailureCause.EXECUTION_TIMEOUT
    assert table.waiting_count() == 1 and of_type(events, SessionPlaced) == []
    # Once every report is in, what is left is served: on a worker with room the Create is placed.
    again = _restarted(30.0, 0.0)
    waiter = create_waiting(again, 1.0)
    worker = again.connect_worker(5.0, registration("w", 2), [_record(expiring), _record(keeps)])
    events = again.take_events()
    assert worker.sessions == {keeps.session_id, placed_for(events, waiter).session_id}
    assert events.index(of_type(events, WorkerRegistered)[0]) < events.index(of_type(events, SessionPlaced)[0])


@pytest.mark.parametrize("at_deadline", [True, False])
def test_adoption_at_and_just_before_each_deadline(at_deadline: bool) -> None:
    """Every deadline of an adopted session is due exactly at it and not an instant before
    (the core's convention: DeadlineQueue.pop_due is ``<= now``)."""
    def when(deadline: float) -> float:
        return deadline if at_deadline else before(deadline)

    old = new_table()
    connect(old, "w", 4)
    expiring = create_placed(old, 0.0, options(execution=10.0, heartbeat=1e6))
    # The execution deadline: adopted and failed EXECUTION_TIMEOUT at once only when it is due.
    table = _restarted(30.0, 0.0)
    worker = table.connect_worker(when(10.0), registration("w", 3), [_record(expiring)])
    assert state(table.get(expiring.session_id)) is (SessionState.FAILED if at_deadline else SessionState.OPEN)
    assert (expiring.session_id in worker.sessions) is not at_deadline
    # The end of the recovery window: a report is adopted only before it.
    table = _restarted(30.0, 0.0)
    worker = table.connect_worker(when(30.0), registration("w", 3), [_record(expiring)])
    assert worker.sessions == set() if at_deadline else {expiring.session_id}
    # The heartbeat, caller and reattach deadlines of an adopted session count from its adoption.
    sessions = {name: create_placed(old, 0.0, opts) for name, opts in (
        ("heartbeat", options(heartbeat=6.0)), ("caller", options(caller=4.0, heartbeat=1e6)),
        ("reattach", options(reattach=5.0, heartbeat=1e6)))}
    table = _restarted(30.0, 0.0)
    worker = table.connect_worker(2.0, registration("w", 3), [_record(s) for s in sessions.values()])
    table.worker_seen(2.0, worker.key, worker.epoch)
    table.advance(when(2.0 + 4.0))
    assert _failure(table.get(sessions["caller"].session_id)) is (FailureCause.CALLER_LOST if at_deadline else None)
    table.disconnect_worker(3.0, worker.key, worker.epoch)  # the heartbeat session fails at once (no reattach)
    assert _failure(table.get(sessions["heartbeat"].session_id)) is FailureCause.WORKER_LOST
    table.advance(when(3.0 + 5.0))
    assert _failure(table.get(sessions["reattach"].session_id)) is (FailureCause.WORKER_LOST if at_deadline else None)
    # Retention of an ended adopted session: gone exactly `retention` after it ended (window over).
    short = SessionTable(new_id=counting_ids("new"), recovering_until=1.0, retention=20.0, signer=SIGNER)
    short.connect_worker(0.0, registration("w", 3), [_record(expiring)])
    short.advance(10.0)
    assert _failure(short.get(expiring.session_id)) is FailureCause.EXECUTION_TIMEOUT
    short.advance(when(30.0))
    if at_deadline:
        with pytest.raises(SessionNotFoundError):
            short.lookup(30.0, expiring.session_id)
    else:
        assert short.lookup(before(30.0), expiring.session_id) is not None


def test_an_adopted_session_fails_heartbeat_timeout_exactly_when_its_worker_was_silent_for_it() -> None:
    old = new_table()
    connect(old, "w", 1)
    session = create_placed(old, 0.0, options(heartbeat=6.0))
    table = _restarted(30.0, 0.0)
    table.connect_worker(2.0, registration("w", 1), [_record(session)])
    table.advance(before(8.0))
    assert state(table.get(session.session_id)) is SessionState.OPEN
    table.advance(8.0)
    assert _failure(table.get(session.session_id)) is FailureCause.HEARTBEAT_TIMEOUT
