"""The session lifecycle: OPEN -> CLOSED | FAILED, each cause, terminal states, retention."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from sessiond.core.errors import SessionNotFoundError
from sessiond.core.events import SessionEnded
from sessiond.core.model import TRANSITIONS, FailureCause, Session, SessionState, Worker
from sessiond.core.resources import ResourceVector
from sessiond.core.table import SessionTable
from tests.unit.support import QUEUE, before, connect, create_placed, new_table, of_type, options, registration, state

PLACED_AT = 100.0


@dataclass
class Scene:
    """One worker with one open session, placed at ``PLACED_AT``."""

    table: SessionTable
    worker: Worker
    session: Session


def _scene(*, execution: float = 3600.0, heartbeat: float = 20.0, retention: float = 600.0) -> Scene:
    table = new_table(retention=retention)
    worker = connect(table, "w1", 2, now=PLACED_AT)
    session = create_placed(table, PLACED_AT, options(execution=execution, heartbeat=heartbeat))
    table.take_events()
    return Scene(table, worker, session)


# Each ending takes an open scene to a terminal state and returns the instant it happened.
def _complete(scene: Scene) -> float:
    scene.table.complete(110.0, scene.session.session_id)
    return 110.0


def _disconnect_without_goodbye(scene: Scene) -> float:
    scene.table.disconnect_worker(110.0, scene.worker.key, scene.worker.epoch)
    return 110.0


def _reconnect_with_same_key(scene: Scene) -> float:
    scene.table.connect_worker(110.0, registration("w1", 2))
    return 110.0


def _silent_worker(scene: Scene) -> float:
    scene.table.advance(PLACED_AT + 20.0)
    return PLACED_AT + 20.0


def _execution_timeout(scene: Scene) -> float:
    # The worker keeps heartbeating, so only the execution timeout (set to 30 s) can end it.
    for now in (110.0, 120.0, 129.0):
        scene.table.worker_seen(now, scene.worker.key, scene.worker.epoch)
        scene.table.advance(now)
    scene.table.advance(PLACED_AT + 30.0)
    return PLACED_AT + 30.0


def _goodbye_without_drain(scene: Scene) -> float:
    scene.table.worker_goodbye(110.0, scene.worker.key, scene.worker.epoch, drain=False)
    return 110.0


def _disconnect_after_drain_goodbye(scene: Scene) -> float:
    scene.table.worker_goodbye(105.0, scene.worker.key, scene.worker.epoch, drain=True)
    assert state(scene.session) is SessionState.OPEN
    scene.table.disconnect_worker(110.0, scene.worker.key, scene.worker.epoch)
    return 110.0


def _reconnect_after_drain_goodbye(scene: Scene) -> float:
    scene.table.worker_goodbye(105.0, scene.worker.key, scene.worker.epoch, drain=True)
    scene.table.connect_worker(110.0, registration("w1", 2))
    return 110.0


Ending = Callable[[Scene], float]

ENDINGS: list[tuple[Ending, SessionState, FailureCause | None]] = [
    (_complete, SessionState.CLOSED, None),
    (_disconnect_without_goodbye, SessionState.FAILED, FailureCause.WORKER_LOST),
    (_reconnect_with_same_key, SessionState.FAILED, FailureCause.WORKER_LOST),
    (_silent_worker, SessionState.FAILED, FailureCause.HEARTBEAT_TIMEOUT),
    (_execution_timeout, SessionState.FAILED, FailureCause.EXECUTION_TIMEOUT),
    (_goodbye_without_drain, SessionState.FAILED, FailureCause.WORKER_SHUTDOWN),
    (_disconnect_after_drain_goodbye, SessionState.FAILED, FailureCause.WORKER_SHUTDOWN),
    (_reconnect_after_drain_goodbye, SessionState.FAILED, FailureCause.WORKER_SHUTDOWN),
]
ENDING_IDS = [ending.__name__.lstrip("_") for ending, _, _ in ENDINGS]


def test_a_new_session_is_open_on_its_worker_with_its_times() -> None:
    scene = _scene(execution=500.0)
    session = scene.session
    assert state(session) is SessionState.OPEN
    assert session.worker is scene.worker
    assert session.task_queue == QUEUE
    assert session.placed_at == PLACED_AT
    assert session.expire_at == PLACED_AT + 500.0
    assert session.closed_at is None and session.failure is None
    assert scene.table.get(session.session_id) is session
    assert scene.table.signer.target(scene.table.recreate_token(session), 0.0).worker == scene.worker.key


@pytest.mark.parametrize(("ending", "expected_state", "cause"), ENDINGS, ids=ENDING_IDS)
def test_each_ending_leaves_open_for_its_state_and_cause(ending: Ending, expected_state: SessionState,
                                                         cause: FailureCause | None) -> None:
    scene = _scene(execution=30.0 if cause is FailureCause.EXECUTION_TIMEOUT else 3600.0)
    ended_at = ending(scene)
    session = scene.session
    assert state(session) is expected_state
    assert session.closed_at == ended_at
    if cause is None:
        assert session.failure is None
    else:
        assert session.failure is not None
        assert session.failure.cause is cause
        assert session.failure.message
    ended = [e for e in of_type(scene.table.take_events(), SessionEnded) if e.session is session]
    assert len(ended) == 1
    assert ended[0].epoch == scene.worker.epoch
    assert session.session_id not in scene.worker.sessions
    assert scene.worker.used["sessions"] == 0


@pytest.mark.parametrize(("ending", "expected_state", "cause"), ENDINGS, ids=ENDING_IDS)
def test_a_terminal_session_never_changes_again(ending: Ending, expected_state: SessionState,
                                                cause: FailureCause | None) -> None:
    scene = _scene(execution=30.0 if cause is FailureCause.EXECUTION_TIMEOUT else 3600.0)
    ending(scene)
    session, table = scene.session, scene.table
    frozen = (session.state, session.failure, session.closed_at)
    table.take_events()

    assert table.complete(200.0, session.session_id) is session
    table.worker_seen(201.0, scene.worker.key, scene.worker.epoch)
    table.worker_goodbye(202.0, scene.worker.key, scene.worker.epoch, drain=False)
    table.disconnect_worker(203.0, scene.worker.key, scene.worker.epoch)
    assert session.closed_at is not None
    table.advance(before(session.closed_at + table.retention))

    assert (session.state, session.failure, session.closed_at) == frozen
    assert state(session) is not SessionState.OPEN
    assert not [e for e in of_type(table.take_events(), SessionEnded) if e.session is session]


def test_complete_on_a_failed_session_is_a_no_op_that_keeps_the_failure() -> None:
    scene = _scene()
    _disconnect_without_goodbye(scene)
    scene.table.take_events()
    assert scene.table.complete(120.0, scene.session.session_id) is scene.session
    assert state(scene.session) is SessionState.FAILED
    assert scene.session.failure is not None and scene.session.failure.cause is FailureCause.WORKER_LOST
    assert scene.table.take_events() == []


def test_complete_twice_is_a_no_op_the_second_time() -> None:
    scene = _scene()
    first = scene.table.complete(110.0, scene.session.session_id)
    assert len(of_type(scene.table.take_events(), SessionEnded)) == 1
    second = scene.table.complete(120.0, scene.session.session_id)
    assert second is first
    assert state(second) is SessionState.CLOSED and second.closed_at == 110.0
    assert scene.table.take_events() == []


def test_complete_of_an_unknown_session_is_not_found() -> None:
    table = new_table()
    with pytest.raises(SessionNotFoundError) as caught:
        table.complete(0.0, "no-such-session")
    assert caught.value.session_id == "no-such-session"


def test_complete_releases_the_slot_at_once() -> None:
    scene = _scene()
    scene.table.complete(110.0, scene.session.session_id)
    assert scene.worker.used == ResourceVector()
    assert scene.table.open_count == 0


def test_the_lifecycle_table_allows_only_open_to_leave() -> None:
    assert TRANSITIONS[SessionState.OPEN] == {SessionState.CLOSED, SessionState.FAILED}
    assert TRANSITIONS[SessionState.CLOSED] == frozenset()
    assert TRANSITIONS[SessionState.FAILED] == frozenset()


@pytest.mark.parametrize(
    "ending", [_complete, _disconnect_without_goodbye, _silent_worker], ids=["closed", "lost", "silent"]
)
def test_a_terminal_session_is_readable_until_retention_passes(ending: Ending) -> None:
    scene = _scene(retention=50.0)
    ended_at = ending(scene)
    sid = scene.session.session_id
    scene.table.advance(before(ended_at + 50.0))
    assert scene.table.get(sid) is scene.session
    scene.table.advance(ended_at + 50.0)
    with pytest.raises(SessionNotFoundError):
        scene.table.get(sid)


def test_an_open_session_is_never_forgotten_by_retention() -> None:
    scene = _scene(retention=1.0, heartbeat=1000.0)
    for now in range(101, 400, 100):
        scene.table.worker_seen(float(now), scene.worker.key, scene.worker.epoch)
        scene.table.advance(float(now))
    assert state(scene.table.get(scene.session.session_id)) is SessionState.OPEN


def test_sessions_view_filters_by_queue_owner_and_state_oldest_first() -> None:
    table = new_table()
    connect(table, "w1", 3)
    connect(table, "w2", 1, task_queue="other")
    a = create_placed(table, 0.0, owner="alice")
    b = create_placed(table, 1.0, owner="bob")
    c = create_placed(table, 2.0, task_queue="other")
    table.complete(3.0, b.session_id)
    assert table.sessions() == ([a, b, c], None)
    assert table.sessions(task_queue=QUEUE) == ([a, b], None)
    assert table.sessions(owner="bob") == ([b], None)
    assert table.sessions(state=SessionState.OPEN) == ([a, c], None)
    assert table.sessions(after_seq=a.seq) == ([b, c], None)


def test_sessions_view_pages_continue_after_the_last_seq_and_bound_the_scan() -> None:
    table = new_table()
    connect(table, "w1", 10)
    made = [create_placed(table, float(i)) for i in range(5)]
    assert table.sessions(limit=2) == (made[:2], made[1].seq)
    assert table.sessions(limit=2, after_seq=made[1].seq) == (made[2:4], made[3].seq)
    assert table.sessions(limit=2, after_seq=made[3].seq) == (made[4:], None)
    # A filter matching nothing still returns after max_scan sessions, with a way to go on.
    assert table.sessions(owner="nobody", max_scan=3) == ([], made[2].seq)
    assert table.sessions(owner="nobody", max_scan=3, after_seq=made[2].seq) == ([], None)


def test_workers_view_lists_connected_workers_in_key_order() -> None:
    table = new_table()
    w_b = connect(table, "b")
    w_a = connect(table, "a")
    w_other = connect(table, "z", task_queue="another")
    gone = connect(table, "c")
    table.disconnect_worker(1.0, gone.key, gone.epoch)
    assert table.workers() == ([w_other, w_a, w_b], None)
    assert table.workers(task_queue=QUEUE) == ([w_a, w_b], None)
    assert table.workers(limit=2) == ([w_other, w_a], w_a.key)
    assert table.workers(limit=2, after=w_a.key) == ([w_b], None)
