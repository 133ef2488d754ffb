"""Principals in the pure core: who owns a session, who may see it, and whose a worker_id is.

The core knows a session's principal as plain data (no tokens, no certificates): a
:class:`~sessiond.core.model.Viewer` says who asks and whether it sees every principal's sessions.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sessiond.core.errors import (
    ExistingOpenSessionError,
    PermissionDeniedError,
    SessionNotFoundError,
    WorkerIdInUseError,
)
from sessiond.core.model import Session, SessionRecord, SessionState, Viewer, Waiter, Worker, WorkerKey
from sessiond.core.table import SessionTable
from tests.unit.support import QUEUE, new_table, options, registration, token_for

A, B = Viewer("team-a"), Viewer("team-b")
OPERATOR = Viewer("ops", sees_all=True)


def placed(table: SessionTable, principal: str, now: float = 0.0, *, owner: str = "",
           request_id: str = "") -> Session:
    result = table.create(now, QUEUE, options(), principal=principal, owner=owner, request_id=request_id)
    assert isinstance(result, Session)
    return result


def connect_as(table: SessionTable, worker_id: str, principal: str, *, sessions: int = 4, now: float = 0.0,
               instance: str | None = None) -> Worker:
    return table.connect_worker(now, replace(registration(worker_id, sessions, instance=instance), principal=principal))


def test_a_session_belongs_to_its_creator_and_is_not_found_by_another_principal() -> None:
    table = new_table()
    connect_as(table, "w1", "workers")
    mine = placed(table, "team-a")
    assert mine.principal == "team-a"
    assert table.lookup(1.0, mine.session_id, A) is mine
    for call in (lambda: table.lookup(1.0, mine.session_id, B),
                 lambda: table.complete(1.0, mine.session_id, B),
                 lambda: table.watch_started(1.0, mine.session_id, B),
                 lambda: table.start_activity(1.0, mine.session_id, 10.0, viewer=B)):
        with pytest.raises(SessionNotFoundError):  # existence not revealed: the same error as a made-up id
            call()
    assert mine.state is SessionState.OPEN and mine.watchers == 0 and not mine.activities


def test_another_principal_does_not_attend_a_session_it_cannot_see() -> None:
    table = new_table()
    connect_as(table, "w1", "workers")
    mine = placed(table, "team-a")
    with pytest.raises(SessionNotFoundError):
        table.lookup(50.0, mine.session_id, B)
    assert mine.caller_seen == 0.0


def test_an_operator_sees_and_completes_every_session_but_runs_no_activity_in_others() -> None:
    table = new_table()
    connect_as(table, "w1", "workers")
    theirs = placed(table, "team-a")
    assert table.lookup(1.0, theirs.session_id, OPERATOR) is theirs
    with pytest.raises(PermissionDeniedError):
        table.start_activity(1.0, theirs.session_id, 10.0, viewer=OPERATOR)
    assert table.complete(2.0, theirs.session_id, OPERATOR).state is SessionState.CLOSED


def test_listing_is_scoped_to_a_principal_or_shows_all() -> None:
    table = new_table()
    connect_as(table, "w1", "workers", sessions=10)
    a1, b1, a2 = placed(table, "team-a"), placed(table, "team-b"), placed(table, "team-a")
    assert table.sessions(principal="team-a")[0] == [a1, a2]
    assert table.sessions(principal="team-b")[0] == [b1]
    assert table.sessions(principal="nobody")[0] == []
    assert table.sessions()[0] == [a1, b1, a2]


def test_owner_keys_are_per_principal() -> None:
    """Another principal cannot squat an owner key and block this principal's creates."""
    table = new_table()
    connect_as(table, "w1", "workers", sessions=10)
    squatter = placed(table, "team-b", owner="order-17")
    mine = placed(table, "team-a", owner="order-17")
    assert mine.session_id != squatter.session_id
    with pytest.raises(ExistingOpenSessionError):
        table.create(1.0, QUEUE, options(), owner="order-17", principal="team-a")
    # ...and a waiting create holds the key for its own principal only.
    table2 = new_table()
    waiting = table2.create(0.0, QUEUE, options(), owner="o", principal="team-a")
    assert isinstance(waiting, Waiter)
    assert isinstance(table2.create(0.0, QUEUE, options(), owner="o", principal="team-b"), Waiter)
    with pytest.raises(ExistingOpenSessionError):
        table2.create(0.0, QUEUE, options(), owner="o", principal="team-a")


def test_request_ids_are_per_principal() -> None:
    """Replaying another principal's request_id is a new request, never their session."""
    table = new_table()
    worker = connect_as(table, "w1", "workers", sessions=10)
    theirs = placed(table, "team-a", request_id="req-1")
    mine = placed(table, "team-b", request_id="req-1")
    assert mine.session_id != theirs.session_id and mine.principal == "team-b"
    assert placed(table, "team-a", request_id="req-1") is theirs
    token = table.recreate_token(theirs)
    again_a = table.recreate(1.0, token, options(), request_id="r", principal="team-a")
    again_b = table.recreate(1.0, token, options(), request_id="r", principal="team-b")
    assert again_a is not again_b and len(worker.sessions) == 4


def test_a_recreated_session_belongs_to_the_recreating_caller() -> None:
    table = new_table()
    connect_as(table, "w1", "workers")
    first = placed(table, "team-a")
    again = table.recreate(1.0, table.recreate_token(first), options(), principal="team-b")
    assert not isinstance(again, Waiter)
    assert again.principal == "team-b" and again.worker is first.worker


def test_a_waiting_create_is_placed_for_its_principal() -> None:
    table = new_table()
    waiter = table.create(0.0, QUEUE, options(), principal="team-a", owner="o")
    assert isinstance(waiter, Waiter)
    connect_as(table, "w1", "workers", now=1.0)
    session = next(iter(table.sessions()[0]))
    assert session.principal == "team-a"
    with pytest.raises(ExistingOpenSessionError):
        table.create(2.0, QUEUE, options(), principal="team-a", owner="o")


# ----------------------------------------------------------------------------- worker ids


def test_a_worker_id_registered_by_one_principal_is_refused_to_another() -> None:
    table = new_table()
    victim = connect_as(table, "w1", "team-a-workers")
    session = placed(table, "team-a")
    with pytest.raises(PermissionDeniedError):
        connect_as(table, "w1", "team-b-workers", now=100.0, instance="impostor")
    # Nothing displaced: the victim keeps its stream and its session.
    assert table.registry.workers[victim.key] is victim and session.state is SessionState.OPEN


def test_the_same_principal_is_still_refused_while_its_live_stream_holds_the_id() -> None:
    table = new_table()
    connect_as(table, "w1", "workers")
    with pytest.raises(WorkerIdInUseError):
        connect_as(table, "w1", "workers", now=1.0, instance="second-process")


def test_the_binding_outlives_the_stream_for_the_grace_period_then_lapses() -> None:
    table = new_table(retention=60.0)
    worker = connect_as(table, "w1", "team-a-workers")
    table.disconnect_worker(10.0, worker.key, worker.epoch)
    with pytest.raises(PermissionDeniedError):
        connect_as(table, "w1", "team-b-workers", now=69.9, instance="other")
    connect_as(table, "w1", "team-a-workers", now=20.0)  # its own principal comes back: fine, and bound again
    again = table.registry.workers[worker.key]
    table.disconnect_worker(30.0, again.key, again.epoch)
    taken = connect_as(table, "w1", "team-b-workers", now=90.0, instance="other")
    assert taken.principal == "team-b-workers"


def test_detached_sessions_keep_the_binding_until_they_end() -> None:
    table = new_table(retention=10.0)
    worker = connect_as(table, "w1", "team-a-workers")
    table.create(0.0, QUEUE, options(reattach=100.0), principal="team-a")
    table.disconnect_worker(1.0, worker.key, worker.epoch)
    table.advance(50.0)  # well past the grace, but the detached session still holds the id
    with pytest.raises(PermissionDeniedError):
        connect_as(table, "w1", "team-b-workers", now=50.0, instance="other")
    table.advance(101.0)  # the session fails WORKER_LOST: now the grace starts
    with pytest.raises(PermissionDeniedError):
        connect_as(table, "w1", "team-b-workers", now=110.0, instance="other")
    assert connect_as(table, "w1", "team-b-workers", now=111.0, instance="other").principal == "team-b-workers"


def test_bindings_of_workers_long_gone_are_forgotten() -> None:
    """Worker ids are often one UUID per process: their bindings must not pile up."""
    table = new_table(retention=5.0)
    for i in range(1000):
        worker = connect_as(table, f"w{i}", "workers", now=float(i))
        table.disconnect_worker(float(i), worker.key, worker.epoch)
    assert len(table._bindings) <= 7


def test_a_token_lands_only_on_a_worker_of_the_principal_it_names() -> None:
    """After the id changed hands (a restart, or the grace passed), a recreate waits for its own worker."""
    table = new_table(retention=1.0)
    token = token_for(WorkerKey(QUEUE, "w1"), "team-a-workers")
    impostor = connect_as(table, "w1", "team-b-workers")
    waiter = table.recreate(1.0, token, options(creation=30.0), principal="team-a")
    assert isinstance(waiter, Waiter) and not impostor.sessions
    table.disconnect_worker(2.0, impostor.key, impostor.epoch)
    table.take_events()
    real = connect_as(table, "w1", "team-a-workers", now=5.0, instance="real")
    assert len(real.sessions) == 1
    assert table.sessions()[0][0].principal == "team-a"


# ----------------------------------------------------------------------------- adoption


def test_an_adopted_session_keeps_its_principal_and_its_principal_scoped_keys() -> None:
    table = SessionTable(recovering_until=1.5)
    worker = connect_as(table, "w1", "workers")
    record = SessionRecord(session_id="s-1", task_queue=QUEUE, options=options(), owner="o", request_id="r",
                           recreated=False, placed_at=0.0, expire_at=1000.0, principal="team-a")
    adopted = table.adopt_session(1.0, worker.key, worker.epoch, record)
    assert adopted.principal == "team-a"
    with pytest.raises(SessionNotFoundError):
        table.lookup(2.0, "s-1", B)
    with pytest.raises(ExistingOpenSessionError):
        table.create(2.0, QUEUE, options(), owner="o", principal="team-a")
    assert table.create(2.0, QUEUE, options(), request_id="r", principal="team-a") is adopted
    assert placed(table, "team-b", 2.0, owner="o").principal == "team-b"
