"""The server does not blame workers for its own pauses (SPEC §6.1).

A pause is a span in which the server observed nothing (its event loop stopped: SIGSTOP, a GC
pause, CPU starvation); the engine measures it and reports it. Liveness then judges a worker only on
the silence the server could have observed: the pause is credited to every worker that was already
being timed. Other deadlines (execution_timeout, activity and creation timeouts) are promises to
callers and are not moved.
"""

from __future__ import annotations

from sessiond.core.errors import ActivityTimeoutError, CreationTimeoutError
from sessiond.core.events import ActivityEnded, WaiterFailed
from sessiond.core.model import FailureCause, SessionState
from tests.unit.support import before, connect, create_placed, create_waiting, new_table, of_type, options, state


def test_a_pause_is_credited_so_a_worker_heard_before_it_is_not_failed_on_resume() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=2.0))
    table.worker_seen(0.4, worker.key, worker.epoch)

    table.server_paused(0.5, 3.0)  # 2.5 s blind: longer than heartbeat_timeout
    table.advance(3.0)

    assert state(session) is SessionState.OPEN
    # What the worker sent during the pause is read now: it keeps the session.
    table.worker_seen(3.01, worker.key, worker.epoch)
    table.advance(4.9)
    assert state(session) is SessionState.OPEN


def test_a_worker_really_silent_fails_once_the_observable_silence_reaches_the_timeout() -> None:
    table = new_table()
    worker = connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=2.0))
    table.worker_seen(0.4, worker.key, worker.epoch)
    table.server_paused(0.5, 3.0)

    # Observable silence: 0.4 -> 0.5 before the pause, then from 3.0 on: due at 0.4 + 2.0 + 2.5.
    table.advance(before(4.9))
    assert state(session) is SessionState.OPEN
    table.advance(4.9)
    assert state(session) is SessionState.FAILED
    assert session.failure is not None and session.failure.cause is FailureCause.HEARTBEAT_TIMEOUT


def test_pauses_add_up_and_only_those_after_the_anchor_count() -> None:
    table = new_table()
    worker = connect(table, "w", 2)
    table.server_paused(0.1, 0.9)  # before the session existed: credits nothing
    session = create_placed(table, 1.0, options(heartbeat=2.0))
    table.server_paused(1.5, 2.0)
    table.server_paused(2.5, 3.25)

    table.advance(before(4.25))
    assert state(session) is SessionState.OPEN
    table.advance(4.25)
    assert state(session) is SessionState.FAILED
    assert worker.sessions == set()


def test_a_pause_moves_no_caller_deadline() -> None:
    table = new_table()
    connect(table, "w", 2)
    session = create_placed(table, 0.0, options(execution=3.0, heartbeat=20.0))
    busy = create_placed(table, 0.0, options(heartbeat=20.0))
    activity = table.start_activity(0.0, busy.session_id, 2.0)
    waiter = create_waiting(table, 0.0, options(creation=2.5))
    table.take_events()

    table.server_paused(0.5, 3.5)
    table.advance(3.5)

    events = table.take_events()
    assert [type(e.error) for e in of_type(events, ActivityEnded) if e.activity is activity] == [ActivityTimeoutError]
    assert [type(e.error) for e in of_type(events, WaiterFailed) if e.waiter_id == waiter.waiter_id] == \
        [CreationTimeoutError]
    assert session.failure is not None and session.failure.cause is FailureCause.EXECUTION_TIMEOUT


def test_a_pause_is_credited_to_staleness_too() -> None:
    table = new_table(max_heartbeat_interval=1.0)
    worker = connect(table, "w", 1)  # stale at 3 intervals of silence: t = 3.0

    table.server_paused(0.5, 10.0)
    table.advance(10.0)

    assert not worker.suspect
    table.advance(before(12.5))
    assert not worker.suspect
    table.advance(12.5)
    assert worker.suspect


def test_an_empty_or_backwards_pause_credits_nothing() -> None:
    table = new_table()
    connect(table, "w", 1)
    session = create_placed(table, 0.0, options(heartbeat=2.0))
    table.server_paused(1.0, 1.0)
    table.server_paused(1.5, 1.2)
    table.advance(2.0)
    assert state(session) is SessionState.FAILED
