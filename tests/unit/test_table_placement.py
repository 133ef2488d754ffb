"""Placement: most-free worker, hard capacity, FIFO waiters, recreate, drain, owner and request_id."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sessiond.core.errors import (
    CreationTimeoutError,
    ExistingOpenSessionError,
    InvalidRecreateTokenError,
    NoCapacityError,
    WorkerUnavailableError,
)
from sessiond.core.events import SessionPlaced, WaiterFailed
from sessiond.core.model import FailureCause, Session, SessionState, Waiter, WorkerKey
from sessiond.core.resources import SESSIONS
from sessiond.core.table import SessionTable
from tests.unit.support import (
    QUEUE,
    before,
    connect,
    create_placed,
    create_waiting,
    failed_for,
    new_table,
    of_type,
    options,
    placed_for,
    state,
    token_for,
)

# ----------------------------------------------------------------- most free, hard limit


@pytest.mark.parametrize(
    "capacities",
    [
        pytest.param({"a": 1}, id="one-worker"),
        pytest.param({"a": 3, "b": 5, "c": 2}, id="uneven"),
        pytest.param({"a": 2, "b": 2}, id="even"),
        pytest.param({"a": 1, "b": 1, "c": 1, "d": 1}, id="many-exclusive"),
    ],
)
def test_each_create_goes_to_a_most_free_worker_until_all_are_full(capacities: dict[str, int]) -> None:
    table = new_table()
    workers = {wid: connect(table, wid, cap) for wid, cap in capacities.items()}
    for i in range(sum(capacities.values())):
        most_free = max(w.free[SESSIONS] for w in workers.values())
        session = create_placed(table, float(i))
        assert session.worker.free[SESSIONS] == most_free - 1
    assert all(len(w.sessions) == w.capacity[SESSIONS] for w in workers.values())
    with pytest.raises(NoCapacityError):
        table.create(10.0, QUEUE, options(creation=0.0))
    create_waiting(table, 10.0)


def test_the_first_create_lands_on_the_worker_with_the_most_room() -> None:
    table = new_table()
    connect(table, "small", 2)
    big = connect(table, "big", 5)
    connect(table, "medium", 3)
    assert create_placed(table).worker is big


def test_a_freed_slot_makes_its_worker_the_most_free_again() -> None:
    table = new_table()
    a = connect(table, "a", 2)
    b = connect(table, "b", 2)
    sessions = [create_placed(table, float(i)) for i in range(4)]
    on_a = next(s for s in sessions if s.worker is a)
    table.complete(5.0, on_a.session_id)
    assert create_placed(table, 6.0).worker is a
    assert len(b.sessions) == 2


def test_capacity_one_is_exclusive() -> None:
    table = new_table()
    worker = connect(table, "gpu-box", 1)
    first = create_placed(table)
    waiter = create_waiting(table, 1.0)
    assert len(worker.sessions) == 1
    table.complete(2.0, first.session_id)
    second = placed_for(table.take_events(), waiter)
    assert second.worker is worker
    assert worker.sessions == {second.session_id}


def test_no_worker_at_all_is_no_capacity_without_waiting_and_a_waiter_with_waiting() -> None:
    table = new_table()
    with pytest.raises(NoCapacityError) as caught:
        table.create(0.0, QUEUE, options(creation=0.0))
    assert caught.value.reason == "NO_CAPACITY"
    assert table.waiting_count() == 0
    create_waiting(table, 0.0)
    assert table.waiting_count() == 1


def test_workers_of_another_task_queue_are_not_candidates() -> None:
    table = new_table()
    connect(table, "elsewhere", 5, task_queue="other")
    with pytest.raises(NoCapacityError):
        table.create(0.0, QUEUE, options(creation=0.0))


# ----------------------------------------------------------------- waiters


def test_waiters_are_served_first_in_first_out_as_slots_free() -> None:
    table = new_table()
    connect(table, "w", 1)
    first = create_placed(table, 0.0)
    waiters = [create_waiting(table, 1.0 + i) for i in range(3)]
    table.take_events()
    current = first
    for i, waiter in enumerate(waiters):
        table.complete(10.0 + i, current.session_id)
        events = table.take_events()
        current = placed_for(events, waiter)
        assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [waiter.waiter_id]
        assert table.waiting_count() == len(waiters) - i - 1


def test_a_new_worker_serves_waiters_in_order_up_to_its_capacity() -> None:
    table = new_table()
    waiters = [create_waiting(table, float(i)) for i in range(3)]
    worker = connect(table, "late", 2, now=5.0)
    events = table.take_events()
    assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [waiters[0].waiter_id, waiters[1].waiter_id]
    assert all(placed_for(events, w).worker is worker for w in waiters[:2])
    assert table.waiting_count() == 1


def test_a_new_create_queues_behind_earlier_waiters() -> None:
    table = new_table()
    connect(table, "w", 1)
    first = create_placed(table)
    early = create_waiting(table, 1.0)
    late = create_waiting(table, 2.0)
    table.complete(3.0, first.session_id)
    events = table.take_events()
    placed_for(events, early)
    assert not [e for e in of_type(events, SessionPlaced) if e.waiter_id == late.waiter_id]


def test_a_waiter_still_waits_just_before_its_creation_timeout_and_fails_exactly_at_it() -> None:
    table = new_table()
    connect(table, "w", 1)
    create_placed(table)
    waiter = create_waiting(table, 10.0, options(creation=5.0))
    assert waiter.deadline == 15.0
    table.take_events()
    table.advance(before(15.0))
    assert table.take_events() == []
    assert table.waiting_count() == 1
    table.advance(15.0)
    failure = failed_for(table.take_events(), waiter)
    assert isinstance(failure.error, CreationTimeoutError)
    assert failure.error.reason == "CREATION_TIMEOUT"
    assert table.waiting_count() == 0 and waiter.done


def test_an_expired_waiter_never_gets_a_slot_that_frees_later() -> None:
    table = new_table()
    connect(table, "w", 1)
    first = create_placed(table)
    create_waiting(table, 1.0, options(creation=2.0))
    table.advance(3.0)
    table.take_events()
    table.complete(4.0, first.session_id)
    assert of_type(table.take_events(), SessionPlaced) == []
    assert create_placed(table, 5.0).worker.key.worker_id == "w"


@pytest.mark.parametrize(
    "free_a_slot",
    [
        pytest.param(lambda table, session: table.complete(20.0, session.session_id), id="complete"),
        pytest.param(lambda table, session: connect(table, "new", 1, now=20.0), id="new-worker"),
    ],
)
def test_a_waiter_past_its_deadline_fails_rather_than_takes_a_slot_freed_before_advance(
    free_a_slot: Callable[[SessionTable, Session], object],
) -> None:
    # The app's timer can fire late: a slot may free after a waiter's deadline but before advance().
    table = new_table()
    connect(table, "w", 1)
    first = create_placed(table)
    waiter = create_waiting(table, 1.0, options(creation=5.0))
    table.take_events()
    free_a_slot(table, first)
    events = table.take_events()
    assert isinstance(failed_for(events, waiter).error, CreationTimeoutError)
    assert of_type(events, SessionPlaced) == []
    table.advance(20.0)
    assert of_type(table.take_events(), WaiterFailed) == []


def test_a_waiter_due_at_the_instant_a_session_fails_is_expired_not_placed() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    create_placed(table, 0.0, options(heartbeat=10.0))
    table.worker_seen(0.0, worker.key, worker.epoch)
    waiter = create_waiting(table, 2.0, options(creation=8.0))
    table.take_events()
    table.advance(10.0)  # the session's heartbeat deadline and the waiter's creation deadline coincide
    events = table.take_events()
    assert isinstance(failed_for(events, waiter).error, CreationTimeoutError)
    assert of_type(events, SessionPlaced) == []


def test_max_wait_caps_the_wait_but_the_session_keeps_the_requested_options() -> None:
    table, first = _full_table()
    asked = options(creation=60.0)
    waiter = table.create(1.0, QUEUE, asked, max_wait=4.0)
    assert isinstance(waiter, Waiter) and waiter.deadline == 5.0
    table.complete(2.0, first.session_id)
    assert placed_for(table.take_events(), waiter).options == asked
    capped = table.create(3.0, QUEUE, asked, max_wait=4.0)
    assert isinstance(capped, Waiter)
    table.take_events()
    table.advance(before(7.0))
    assert of_type(table.take_events(), WaiterFailed) == []
    table.advance(7.0)
    assert isinstance(failed_for(table.take_events(), capped).error, CreationTimeoutError)


@pytest.mark.parametrize("call", ["create", "recreate"])
def test_no_time_left_to_wait_fails_at_once_even_with_a_creation_timeout(call: str) -> None:
    table, first = _full_table()
    with pytest.raises(NoCapacityError):
        if call == "create":
            table.create(1.0, QUEUE, options(creation=60.0), max_wait=0.0)
        else:
            table.recreate(1.0, table.recreate_token(first), options(creation=60.0), max_wait=0.0)
    assert table.waiting_count() == 0


def test_a_cancelled_waiter_takes_no_slot_and_the_next_waiter_gets_it() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    first = create_placed(table)
    cancelled = create_waiting(table, 1.0)
    patient = create_waiting(table, 2.0)
    table.cancel_waiter(2.5, cancelled.waiter_id)
    assert table.waiting_count() == 1
    table.take_events()
    table.complete(3.0, first.session_id)
    events = table.take_events()
    assert placed_for(events, patient).worker is worker
    assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [patient.waiter_id]
    table.advance(1000.0)
    assert of_type(table.take_events(), WaiterFailed) == []


def test_cancelling_an_unknown_or_finished_waiter_is_harmless() -> None:
    table = new_table()
    waiter = create_waiting(table)
    table.cancel_waiter(0.5, waiter.waiter_id)
    table.cancel_waiter(0.5, waiter.waiter_id)
    table.cancel_waiter(0.5, "nobody")
    assert table.waiting_count() == 0
    connect(table, "w", 1, now=1.0)
    assert of_type(table.take_events(), SessionPlaced) == []


def test_after_cancelling_the_only_waiter_a_new_create_is_placed_at_once() -> None:
    table = new_table()
    connect(table, "w", 1)
    first = create_placed(table)
    waiter = create_waiting(table, 1.0)
    table.cancel_waiter(1.5, waiter.waiter_id)
    table.complete(2.0, first.session_id)
    create_placed(table, 3.0)


# ----------------------------------------------------------------- recreate


def test_recreate_lands_on_the_same_worker_with_a_new_session_id() -> None:
    table = new_table()
    target = connect(table, "a", 2)
    first = create_placed(table)
    connect(table, "b", 5, now=1.0)  # now the most free: a plain create would go there
    again = table.recreate(2.0, table.recreate_token(first), options())
    assert isinstance(again, Session)
    assert again.worker is target
    assert again.session_id != first.session_id
    assert again.task_queue == first.task_queue


def test_one_token_works_many_times() -> None:
    table = new_table()
    worker = connect(table, "a", 3)
    first = create_placed(table)
    token = table.recreate_token(first)
    table.complete(1.0, first.session_id)
    ids = set()
    for now in (2.0, 3.0, 4.0):
        session = table.recreate(now, token, options())
        assert isinstance(session, Session) and session.worker is worker
        ids.add(session.session_id)
    assert len(ids) == 3


def test_recreate_with_a_token_made_before_the_session_closed_still_works_after() -> None:
    table = new_table(retention=1.0)
    connect(table, "a", 1)
    first = create_placed(table)
    token = table.recreate_token(first)
    table.complete(1.0, first.session_id)
    table.advance(10.0)  # the first session is forgotten; the token does not depend on it
    assert isinstance(table.recreate(11.0, token, options()), Session)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not-a-token", id="garbage"),
        pytest.param(token_for(WorkerKey(QUEUE, "a"))[:-1] + b"!", id="corrupted"),
        pytest.param(b"\x08\x96\x01", id="foreign"),
    ],
)
def test_an_invalid_token_is_rejected_and_takes_no_slot_and_does_not_wait(token: bytes) -> None:
    table = new_table()
    worker = connect(table, "a", 1)
    table.take_events()
    with pytest.raises(InvalidRecreateTokenError):
        table.recreate(0.0, token, options(), owner="alice", request_id="r1")
    assert len(worker.sessions) == 0
    assert table.waiting_count() == 0
    assert table.take_events() == []
    create_placed(table, 1.0, owner="alice", request_id="r1")


def test_recreate_of_a_full_worker_waits_for_its_slot_not_another_worker() -> None:
    table = new_table()
    full = connect(table, "full", 1)
    first = create_placed(table)
    connect(table, "roomy", 3)
    waiter = table.recreate(1.0, table.recreate_token(first), options())
    assert isinstance(waiter, Waiter)
    table.take_events()
    table.complete(2.0, first.session_id)
    assert placed_for(table.take_events(), waiter).worker is full


def test_recreate_of_a_full_worker_fails_with_worker_unavailable_exactly_at_its_creation_timeout() -> None:
    table = new_table()
    connect(table, "full", 1)
    first = create_placed(table)
    waiter = table.recreate(10.0, table.recreate_token(first), options(creation=5.0))
    assert isinstance(waiter, Waiter)
    table.take_events()
    table.advance(before(15.0))
    assert table.take_events() == []
    assert table.waiting_count() == 1
    table.advance(15.0)
    failure = failed_for(table.take_events(), waiter)
    assert isinstance(failure.error, WorkerUnavailableError)
    assert failure.error.reason == "WORKER_UNAVAILABLE"


def test_recreate_of_a_disconnected_worker_waits_then_fails_with_worker_unavailable() -> None:
    table = new_table()
    worker = connect(table, "a", 1)
    token = table.recreate_token(create_placed(table))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    connect(table, "b", 5, now=1.5)  # another worker of the queue does not count
    waiter = table.recreate(2.0, token, options(creation=10.0))
    assert isinstance(waiter, Waiter)
    table.take_events()
    table.advance(before(12.0))
    assert of_type(table.take_events(), WaiterFailed) == []
    table.advance(12.0)
    assert isinstance(failed_for(table.take_events(), waiter).error, WorkerUnavailableError)


def test_recreate_of_a_disconnected_worker_is_served_when_it_reconnects_in_time() -> None:
    table = new_table()
    worker = connect(table, "a", 1)
    token = table.recreate_token(create_placed(table))
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    waiter = table.recreate(2.0, token, options(creation=10.0))
    assert isinstance(waiter, Waiter)
    table.take_events()
    connect(table, "a", 1, now=5.0, task_queue="another-queue")  # same worker id, other queue: not it
    assert of_type(table.take_events(), SessionPlaced) == []
    back = connect(table, "a", 1, now=before(12.0))
    session = placed_for(table.take_events(), waiter)
    assert session.worker is back
    assert state(session) is SessionState.OPEN


def test_recreate_of_a_worker_never_seen_waits_for_it() -> None:
    table = new_table()
    token = token_for(WorkerKey(QUEUE, "future"))
    waiter = table.recreate(0.0, token, options())
    assert isinstance(waiter, Waiter)
    worker = connect(table, "future", 1, now=1.0)
    assert placed_for(table.take_events(), waiter).worker is worker


@pytest.mark.parametrize(
    ("connected", "error"),
    [pytest.param(True, NoCapacityError, id="full"), pytest.param(False, WorkerUnavailableError, id="gone")],
)
def test_recreate_without_waiting_fails_at_once(connected: bool, error: type[Exception]) -> None:
    table = new_table()
    worker = connect(table, "a", 1)
    token = table.recreate_token(create_placed(table))
    if not connected:
        table.disconnect_worker(1.0, worker.key, worker.epoch)
    with pytest.raises(error):
        table.recreate(2.0, token, options(creation=0.0))
    assert table.waiting_count() == 0


def test_recreates_for_a_worker_go_before_create_waiters_of_its_queue() -> None:
    table = new_table()
    connect(table, "a", 1)
    first = create_placed(table)
    plain = create_waiting(table, 1.0)
    targeted = table.recreate(2.0, table.recreate_token(first), options())
    assert isinstance(targeted, Waiter)
    table.take_events()
    table.complete(3.0, first.session_id)
    events = table.take_events()
    assert [e.waiter_id for e in of_type(events, SessionPlaced)] == [targeted.waiter_id]
    assert table.waiting_count() == 1 and not plain.done


# ----------------------------------------------------------------- drain and suspect


def test_a_draining_worker_gets_no_new_sessions_but_keeps_its_open_ones() -> None:
    table = new_table()
    draining = connect(table, "draining", 5)
    kept = create_placed(table)
    table.worker_goodbye(1.0, draining.key, draining.epoch, drain=True)
    with pytest.raises(NoCapacityError):
        table.create(2.0, QUEUE, options(creation=0.0))
    waiter = table.recreate(2.0, table.recreate_token(kept), options(creation=5.0))
    assert isinstance(waiter, Waiter)
    assert state(kept) is SessionState.OPEN
    table.take_events()
    table.complete(3.0, kept.session_id)
    assert state(kept) is SessionState.CLOSED
    assert of_type(table.take_events(), SessionPlaced) == []  # the freed slot stays empty
    assert len(draining.sessions) == 0
    other = connect(table, "other", 1, now=4.0)
    assert create_placed(table, 5.0).worker is other


def test_a_draining_worker_keeps_heartbeat_liveness_for_its_open_sessions() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=10.0))
    table.worker_goodbye(5.0, worker.key, worker.epoch, drain=True)
    table.advance(before(15.0))
    assert state(session) is SessionState.OPEN
    table.advance(15.0)
    assert session.failure is not None and session.failure.cause is FailureCause.HEARTBEAT_TIMEOUT


def test_a_stale_worker_gets_no_new_sessions_until_it_speaks_again() -> None:
    table = new_table(max_heartbeat_interval=10.0)
    quiet = connect(table, "quiet", 3)
    table.advance(before(30.0))
    assert not quiet.suspect
    table.advance(30.0)  # silent for STALE_INTERVALS x 10 s
    assert quiet.suspect
    with pytest.raises(NoCapacityError):
        table.create(31.0, QUEUE, options(creation=0.0))
    waiter = create_waiting(table, 31.0)
    table.worker_seen(32.0, quiet.key, quiet.epoch)
    assert not quiet.suspect
    assert placed_for(table.take_events(), waiter).worker is quiet


def test_a_stale_worker_is_passed_over_for_a_live_one() -> None:
    table = new_table()
    quiet = connect(table, "quiet", 5)
    talker = connect(table, "talker", 1)
    table.worker_seen(29.0, talker.key, talker.epoch)
    table.advance(30.0)
    assert quiet.suspect and not talker.suspect
    assert create_placed(table, 30.0).worker is talker


def test_a_recreate_for_a_stale_worker_waits_until_it_speaks() -> None:
    table = new_table()
    worker = connect(table, "w", 2)
    first = create_placed(table, 0.0, options(heartbeat=1000.0))
    table.advance(30.0)
    assert worker.suspect
    waiter = table.recreate(31.0, table.recreate_token(first), options())
    assert isinstance(waiter, Waiter)
    table.worker_seen(32.0, worker.key, worker.epoch)
    assert placed_for(table.take_events(), waiter).worker is worker


def test_a_slot_freed_on_a_silent_worker_is_not_handed_to_a_waiter() -> None:
    # heartbeat_timeout 15 s -> interval 5 s -> stale after 15 s: the very instant the session fails.
    table = new_table()
    hung = connect(table, "hung", 1)
    session = create_placed(table, 0.0, options(heartbeat=15.0))
    waiter = create_waiting(table, 0.0, options(creation=100.0))
    table.take_events()
    table.advance(15.0)
    assert session.failure is not None and session.failure.cause is FailureCause.HEARTBEAT_TIMEOUT
    assert hung.suspect
    assert of_type(table.take_events(), SessionPlaced) == []
    assert not waiter.done and len(hung.sessions) == 0
    table.worker_seen(16.0, hung.key, hung.epoch)
    assert placed_for(table.take_events(), waiter).worker is hung


# ----------------------------------------------------------------- owner and request_id


def _full_table() -> tuple[SessionTable, Session]:
    table = new_table()
    connect(table, "w", 1)
    return table, create_placed(table)


def test_an_owner_with_an_open_session_cannot_create_another() -> None:
    table = new_table()
    connect(table, "w", 5)
    held = create_placed(table, owner="alice")
    with pytest.raises(ExistingOpenSessionError) as caught:
        table.create(1.0, QUEUE, options(), owner="alice")
    assert caught.value.session_id == held.session_id
    assert caught.value.reason == "EXISTING_OPEN_SESSION"
    with pytest.raises(ExistingOpenSessionError):
        table.recreate(1.0, table.recreate_token(held), options(), owner="alice")
    assert len(held.worker.sessions) == 1
    create_placed(table, 2.0, owner="bob")
    create_placed(table, 2.0)
    create_placed(table, 2.0)


def test_an_owner_that_is_waiting_cannot_create_another() -> None:
    table, _ = _full_table()
    create_waiting(table, 1.0, owner="alice")
    with pytest.raises(ExistingOpenSessionError) as caught:
        table.create(2.0, QUEUE, options(), owner="alice")
    assert caught.value.session_id is None
    assert table.waiting_count() == 1


@pytest.mark.parametrize("end", ["complete", "fail"])
def test_an_owner_may_create_again_once_its_session_ended(end: str) -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    held = create_placed(table, owner="alice")
    if end == "complete":
        table.complete(1.0, held.session_id)
    else:
        table.disconnect_worker(1.0, worker.key, worker.epoch)
        connect(table, "w", 1, now=1.5)
    assert create_placed(table, 2.0, owner="alice").owner == "alice"


@pytest.mark.parametrize("end", ["cancel", "expire"])
def test_an_owner_may_create_again_once_its_waiter_ended(end: str) -> None:
    table, _ = _full_table()
    waiter = create_waiting(table, 1.0, options(creation=5.0), owner="alice")
    if end == "cancel":
        table.cancel_waiter(2.0, waiter.waiter_id)
    else:
        table.advance(6.0)
    create_waiting(table, 7.0, owner="alice")


def test_a_placed_waiter_holds_its_owner_as_a_session() -> None:
    table, first = _full_table()
    waiter = create_waiting(table, 1.0, owner="alice")
    table.complete(2.0, first.session_id)
    session = placed_for(table.take_events(), waiter)
    assert session.owner == "alice"
    with pytest.raises(ExistingOpenSessionError) as caught:
        table.create(3.0, QUEUE, options(), owner="alice")
    assert caught.value.session_id == session.session_id


def test_a_retried_create_returns_the_same_session_and_takes_no_second_slot() -> None:
    table = new_table()
    worker = connect(table, "w", 5)
    first = create_placed(table, 0.0, request_id="req-1", owner="alice")
    table.take_events()
    again = table.create(1.0, QUEUE, options(), request_id="req-1", owner="alice")
    assert again is first
    assert len(worker.sessions) == 1
    assert table.take_events() == []


def test_a_retried_create_while_waiting_returns_the_same_waiter_then_its_session() -> None:
    table, first = _full_table()
    waiter = create_waiting(table, 1.0, request_id="req-1")
    assert table.create(2.0, QUEUE, options(), request_id="req-1") is waiter
    assert table.waiting_count() == 1
    table.complete(3.0, first.session_id)
    session = placed_for(table.take_events(), waiter)
    assert table.create(4.0, QUEUE, options(), request_id="req-1") is session
    assert len(session.worker.sessions) == 1


def test_request_ids_are_scoped_by_the_whole_request_not_a_joined_string() -> None:
    # The core takes names as given (the server rejects NUL in names); its keys must not collide
    # however the parts are split: ("a\x00b", "c") and ("a", "b\x00c") are different requests.
    table = new_table()
    connect(table, "w1", 5, task_queue="a\x00b")
    connect(table, "w2", 5, task_queue="a")

    first = create_placed(table, 0.0, task_queue="a\x00b", request_id="c")
    second = create_placed(table, 1.0, task_queue="a", request_id="b\x00c")

    assert second is not first
    assert (first.task_queue, second.task_queue) == ("a\x00b", "a")


def test_a_retried_recreate_returns_the_same_session() -> None:
    table = new_table()
    worker = connect(table, "w", 5)
    token = table.recreate_token(create_placed(table))
    first = table.recreate(1.0, token, options(), request_id="req-9")
    assert table.recreate(2.0, token, options(), request_id="req-9") is first
    assert len(worker.sessions) == 2


def test_a_request_id_can_be_used_again_after_its_waiter_expired() -> None:
    table, _ = _full_table()
    waiter = create_waiting(table, 1.0, options(creation=2.0), request_id="req-1")
    table.advance(3.0)
    again = create_waiting(table, 4.0, request_id="req-1")
    assert again is not waiter


def test_the_same_request_id_on_another_request_is_another_request() -> None:
    table = new_table()
    connect(table, "w1", 2)
    connect(table, "w2", 2, task_queue="other")
    here = create_placed(table, 0.0, request_id="req-1")
    there = table.create(1.0, "other", options(), request_id="req-1")
    assert isinstance(there, Session) and there.session_id != here.session_id
    assert there.task_queue == "other"
    token = token_for(here.worker.key)
    recreated = table.recreate(2.0, token, options(), request_id="req-1")
    assert isinstance(recreated, Session) and recreated.session_id not in (here.session_id, there.session_id)
    # ...while a true retry of each is still idempotent.
    assert table.create(3.0, QUEUE, options(), request_id="req-1") is here
    assert table.recreate(3.0, token, options(), request_id="req-1") is recreated


def test_per_queue_and_per_worker_waiter_state_does_not_outlive_its_waiters() -> None:
    # Queue names and tokens come from callers: state kept per name would grow without bound.
    table = new_table()
    connect(table, "w1", 1)
    for i in range(50):
        with pytest.raises(NoCapacityError):
            table.create(0.0, f"nobody-{i}", options(creation=0.0))
        table.create(0.0, f"later-{i}", options(creation=1.0))
        table.recreate(0.0, token_for(WorkerKey("q", f"gone-{i}")), options(creation=1.0))
    table.advance(1.0)
    create_placed(table, 2.0)
    assert table.waiting.queue_names == set() and table.waiting.worker_keys == set()
